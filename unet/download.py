"""Fetch the stacks from an ordered list of sources and accept each only if its pixels verify.

Sources, in order: a local directory (each stack a TIFF ``name``, a folder ``stem/`` of single-slice PNG/TIFF
files in natural order, or an OME-Zarr image ``stem.ome.zarr``), whole-stack base URLs (the file name is
appended), and per-slice mirrors (one URL per slice, stacked in index order). A stack is accepted from the first
source whose copy decodes as a grey-value stack and whose pixel sha256 matches (when one is configured), so any
container or mirror layout works. Network transfers
are checked against their Content-Length and retried with backoff; a host that fails every attempt is skipped for
the later files, and all failed attempts together may take at most ``download.budget_s`` seconds, so a network that
answers nothing fails the stage in bounded time.
"""

from __future__ import annotations

import http.client
import logging
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from unet.config import DownloadConfig, SliceMirrorConfig
from unet.io import DataError, check_labels, check_pair, pixel_sha256, read_stack, write_stack
from unet.outputs import atomic_path

log = logging.getLogger(__name__)

# Failures another attempt may not have (network, connection, short body); http.client.HTTPException is not
# an OSError, so urllib lets it through unwrapped.
TRANSIENT = (OSError, http.client.HTTPException)


class DownloadError(RuntimeError):
    """No source gave a valid copy of a file; the message lists every source tried and why."""


class ShortTransfer(OSError):
    """The body ended before its Content-Length."""


class SourceFailed(Exception):
    """One source failed for one file; the message is the reason (one line)."""


class NotTried(SourceFailed):
    """The source was not asked: its host failed for an earlier file, or ``download.budget_s`` is spent."""


@dataclass(frozen=True)
class Fetched:
    name: str
    source: str
    array: np.ndarray
    size: int


@dataclass
class Session:
    """The state one download shares across files: the time budget left and the hosts that failed."""

    cfg: DownloadConfig
    left: float = field(init=False)
    dead: dict[str, str] = field(default_factory=dict)  # host -> why it failed
    opener: urllib.request.OpenerDirector = field(init=False)

    def __post_init__(self) -> None:
        self.left = self.cfg.budget_s
        self.opener = _opener(self)

    def timeout(self, seconds: float) -> float:
        """``seconds`` capped by the budget left; raises SourceFailed when the budget is spent."""
        if self.left <= 0:
            raise NotTried(f"not tried: download.budget_s ({self.cfg.budget_s:g} s) spent on failed attempts")
        return min(seconds, self.left)


def fetch_url(url: str, dest: Path, s: Session) -> None:
    """Download ``url`` to ``dest``; retry network errors, short bodies and 5xx with exponential backoff.

    Raises:
        SourceFailed: HTTP 4xx, or every attempt failed (the host is then marked dead for later files).
    """
    host = urlsplit(url).netloc
    if host in s.dead:
        raise NotTried(f"skipped: {host} failed earlier ({s.dead[host]})")
    for attempt in range(1, s.cfg.retries + 1):
        start = time.monotonic()
        try:
            _get(url, dest, s)
            return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                raise SourceFailed(f"HTTP {exc.code}") from None
            reason = f"HTTP {exc.code}"
        except urllib.error.URLError as exc:
            reason = _why(exc.reason)
        except TRANSIENT as exc:
            reason = _why(exc)
        s.left -= time.monotonic() - start
        if attempt == s.cfg.retries or s.left <= 0:
            s.dead[host] = reason
            raise SourceFailed(f"{reason} ({attempt} attempt{'s' * (attempt > 1)})")
        wait = min(s.cfg.backoff_s * 2 ** (attempt - 1), s.left)
        log.warning("%s: %s; retry %d/%d in %.1fs", url, reason, attempt, s.cfg.retries - 1, wait)
        time.sleep(wait)
        s.left -= wait


def _get(url: str, dest: Path, s: Session) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": "unet-medical"})
    with s.opener.open(req, timeout=s.timeout(s.cfg.connect_timeout_s)) as resp, open(dest, "wb") as out:
        expected = resp.headers.get("Content-Length")
        n = 0
        while chunk := resp.read(1 << 20):
            out.write(chunk)
            n += len(chunk)
        if expected is not None and n != int(expected):
            raise ShortTransfer(f"body of {n} bytes, Content-Length {expected}")


def _opener(s: Session) -> urllib.request.OpenerDirector:
    """urllib with a bounded name lookup + connect (``connect_timeout_s``) and read (``timeout_s``) timeout."""

    def connect(address: tuple[str, int], timeout: Any, source_address: Any = None, **_: Any) -> socket.socket:
        sock = _connect(address, float(timeout))
        sock.settimeout(s.timeout(s.cfg.timeout_s))
        return sock

    # http.client sets _create_connection (socket.create_connection) per instance, in __init__
    class HTTPConnection(http.client.HTTPConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._create_connection = connect

    class HTTPSConnection(http.client.HTTPSConnection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._create_connection = connect

    class HTTPHandler(urllib.request.HTTPHandler):
        def do_open(self, http_class: Any, req: urllib.request.Request, **kw: Any) -> http.client.HTTPResponse:
            return super().do_open(HTTPConnection, req, **kw)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def do_open(self, http_class: Any, req: urllib.request.Request, **kw: Any) -> http.client.HTTPResponse:
            return super().do_open(HTTPSConnection, req, **kw)

    return urllib.request.build_opener(HTTPHandler, HTTPSHandler)


def _connect(address: tuple[str, int], timeout: float) -> socket.socket:
    """``socket.create_connection`` whose name lookup is bounded too (getaddrinfo takes no timeout)."""
    deadline = time.monotonic() + timeout
    found: list[Any] = []
    lookup = threading.Thread(target=_lookup, args=(address, found), daemon=True)
    lookup.start()
    lookup.join(timeout)
    if not found:
        raise TimeoutError(f"name lookup of {address[0]} timed out after {timeout:g} s")
    if isinstance(found[0], OSError):
        raise found[0]
    error: OSError = OSError(f"no address for {address[0]}")
    for family, kind, proto, _, addr in found[0]:
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.connect(addr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


def _lookup(address: tuple[str, int], found: list[Any]) -> None:
    try:
        found.append(socket.getaddrinfo(*address, type=socket.SOCK_STREAM))
    except OSError as exc:
        found.append(exc)


def _why(exc: BaseException | str) -> str:
    text, kind = (exc, "") if isinstance(exc, str) else (" ".join(str(exc).split()), type(exc).__name__)
    return f"{kind}: {text}" if text and kind and kind not in text else text or kind


def from_local(local: Path, name: str, workdir: Path) -> tuple[str, Path]:
    """The local copy of stack ``name``: the TIFF ``local/name``, the slice folder ``local/stem/`` or the OME-Zarr
    image ``local/stem.ome.zarr`` (or ``stem.zarr``); exactly one of them."""
    stem = PurePosixPath(name).stem
    file, folder = local / name, local / stem
    if not local.is_dir():
        raise SourceFailed("no such directory")
    found = [p for p in (file, folder, local / f"{stem}.ome.zarr", local / f"{stem}.zarr") if p.exists()]
    if len(found) > 1:
        shown = [p.name + "/" * p.is_dir() for p in found]
        both = "both " * (len(found) == 2)
        raise SourceFailed(f"{both}{', '.join(shown[:-1])} and {shown[-1]} exist; keep one")
    if not found:
        raise SourceFailed(f"no such file (nor a slice folder {folder.name}/ or OME-Zarr image {stem}.ome.zarr/)")
    if found[0].is_dir():  # a slice folder or an OME-Zarr image: read in place, written as a TIFF
        return f"{found[0]}/", found[0]
    shutil.copyfile(file, workdir / name)
    return str(file), workdir / name


def from_mirror(mirror: SliceMirrorConfig, name: str, workdir: Path, s: Session) -> Path:
    """Fetch the slices of ``name`` from a per-slice mirror into a folder of ``workdir``, in index order."""
    template = mirror.files[name]
    folder = workdir / f"{PurePosixPath(name).stem}.slices"
    folder.mkdir()
    for i in range(mirror.slices):
        url = template.format(i=i)
        try:
            fetch_url(url, folder / f"{i}{PurePosixPath(urlsplit(url).path).suffix}", s)
        except NotTried:
            raise
        except SourceFailed as exc:
            raise SourceFailed(f"slice {i}: {exc}") from None
    return folder


def fetch_one(name: str, local: str | None, s: Session, workdir: Path) -> Fetched:
    """Try each source in order for stack ``name``; return the first verified copy.

    Raises:
        DownloadError: no source gave a valid copy; the message lists every source and why it failed.
    """
    expected = s.cfg.pixel_sha256.get(name)
    failures: list[str] = []
    candidates: list[tuple[str, Any]] = [(f"{local.rstrip('/')}/{name}", "local")] if local else []
    candidates += [(f"{u.rstrip('/')}/{name}", "url") for u in s.cfg.urls]
    candidates += [(m.files[name] + f" ({m.slices} slices)", m) for m in s.cfg.slice_mirrors if name in m.files]
    for where, kind in candidates:
        tmp = workdir / name
        try:
            if kind == "local":
                where, path = from_local(Path(local or "."), name, workdir)
            elif kind == "url":
                fetch_url(where, tmp, s)
                path = tmp
            else:
                path = from_mirror(kind, name, workdir, s)
            arr = read_stack(path, name=where.rstrip("/"))
            digest = pixel_sha256(arr)
            if expected and digest != expected:
                raise DataError(
                    f"pixel sha256 {digest[:12]}... != expected {expected[:12]}... "
                    "(download.pixel_sha256; {} accepts any stack)"
                )
            if path != tmp:  # a slice folder or an OME-Zarr image: data/raw holds multi-page TIFFs
                write_stack(tmp, arr)
            for failed in failures:  # said only when another source did it: else the error lists them all
                log.warning("%s (used %s instead)", failed, where)
            return Fetched(name, where, arr, tmp.stat().st_size)
        except SourceFailed as exc:
            failures.append(f"{where}: {exc}")
        except (DataError, OSError) as exc:
            text = " ".join(str(exc).split())
            failures.append(text if text.startswith(where.rstrip("/")) else f"{where}: {text}")
        finally:
            shutil.rmtree(workdir / f"{PurePosixPath(name).stem}.slices", ignore_errors=True)
    if not candidates:
        failures.append("no local directory, download.urls or download.slice_mirrors entry for it")
    raise DownloadError(f"{name}: no source gave a valid copy; tried: " + "; ".join(failures))


def download(cfg: DownloadConfig, out_dir: str | Path, local_dir: str | None = None) -> dict[str, dict[str, str]]:
    """Fetch every configured stack into ``out_dir`` (replaced atomically) and return its provenance.

    Raises:
        DownloadError: a file had no valid source.
        DataError: the files are valid alone but not together (labels not binary, shapes differ).
    """
    session = Session(cfg)
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        got = {}
        for name in cfg.files:
            f = fetch_one(name, local_dir, session, tmp)
            got[name] = f
            log.info(
                "%s: ok from %s (%.1f MB, %s %s, pixel sha256 %s%s)",
                name,
                f.source,
                f.size / 1e6,
                "x".join(map(str, f.array.shape)),
                f.array.dtype,
                pixel_sha256(f.array)[:12],
                "" if name in cfg.pixel_sha256 else ", not verified: no download.pixel_sha256 entry",
            )
        labels = got[cfg.labels]
        check_labels(labels.array, labels.source)
        check_pair(got[cfg.images[0]].array, labels.array, got[cfg.images[0]].source, labels.source)
        provenance = {n: {"source": f.source, "pixel_sha256": pixel_sha256(f.array)} for n, f in got.items()}
    return provenance
