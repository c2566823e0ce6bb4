"""Fetch the TIFF stacks from an ordered list of sources and accept each only if its pixels verify.

A source is a local directory or a base URL; the file name is appended. A file is accepted from the
first source whose copy decodes as a grey-value stack and whose pixel sha256 matches (when one is
configured), so any container or mirror format works. Network errors are retried with backoff.
"""

from __future__ import annotations

import logging
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unet.config import DownloadConfig
from unet.io import DataError, atomic_path, check_labels, check_pair, pixel_sha256, read_stack

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """No source gave a valid copy of a file; the message lists every source tried and why."""


@dataclass(frozen=True)
class Fetched:
    name: str
    source: str
    array: np.ndarray
    size: int


def sources(cfg: DownloadConfig, local_dir: str | None) -> list[str]:
    """The ordered sources: the local directory (if any), then the configured URLs."""
    first = [local_dir] if local_dir else []
    return first + list(cfg.urls)


def fetch_url(url: str, dest: Path, cfg: DownloadConfig) -> None:
    """Download ``url`` to ``dest``, retrying network errors and 5xx with exponential backoff."""
    for attempt in range(1, cfg.retries + 1):
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "unet-medical"})
            with urllib.request.urlopen(req, timeout=cfg.timeout_s) as resp, open(dest, "wb") as out:
                shutil.copyfileobj(resp, out, length=1 << 20)
            return
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == cfg.retries:
                raise
            reason = f"HTTP {exc.code}"
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            if attempt == cfg.retries:
                raise
            reason = str(getattr(exc, "reason", exc))
        wait = cfg.backoff_s * 2 ** (attempt - 1)
        log.warning("%s: %s; retry %d/%d in %.1fs", url, reason, attempt, cfg.retries - 1, wait)
        time.sleep(wait)


def fetch_one(name: str, srcs: list[str], cfg: DownloadConfig, workdir: Path) -> Fetched:
    """Try each source in order for file ``name``; return the first verified copy."""
    expected = cfg.pixel_sha256.get(name)
    failures = []
    for src in srcs:
        where = f"{src.rstrip('/')}/{name}"
        tmp = workdir / name
        try:
            if src.startswith(("http://", "https://")):
                fetch_url(where, tmp, cfg)
            else:
                if not Path(where).is_file():
                    raise FileNotFoundError("no such file")
                shutil.copyfile(where, tmp)
            arr = read_stack(tmp, name=where)
            digest = pixel_sha256(arr)
            if expected and digest != expected:
                raise DataError(f"pixel sha256 {digest[:12]}... != expected {expected[:12]}...")
            return Fetched(name, where, arr, tmp.stat().st_size)
        except urllib.error.HTTPError as exc:
            failures.append(f"{where}: HTTP {exc.code}")
        except urllib.error.URLError as exc:
            failures.append(f"{where}: {exc.reason}")
        except (DataError, OSError) as exc:
            failures.append(f"{where}: {str(exc).removeprefix(where + ': ')}")
        log.warning("%s", failures[-1])
    raise DownloadError(f"{name}: no source gave a valid copy; tried: " + "; ".join(failures))


def download(cfg: DownloadConfig, out_dir: str | Path, local_dir: str | None = None) -> dict[str, dict[str, str]]:
    """Fetch every configured file into ``out_dir`` (replaced atomically) and return its provenance.

    Raises:
        DownloadError: a file had no valid source.
        DataError: the files are valid alone but not together (labels not binary, shapes differ).
    """
    srcs = sources(cfg, local_dir)
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        got = {}
        for name in cfg.files:
            f = fetch_one(name, srcs, cfg, tmp)
            got[name] = f
            log.info(
                "%s: ok from %s (%.1f MB, %s, pixel sha256 %s)",
                name,
                f.source,
                f.size / 1e6,
                "x".join(map(str, f.array.shape)),
                pixel_sha256(f.array)[:12],
            )
        labels = got[cfg.labels]
        check_labels(labels.array, labels.source)
        check_pair(got[cfg.images[0]].array, labels.array, got[cfg.images[0]].source, labels.source)
        provenance = {n: {"source": f.source, "pixel_sha256": pixel_sha256(f.array)} for n, f in got.items()}
    return provenance
