"""download: sources in order, pixel-hash verification, retries, and one-line errors with no output."""

import dataclasses
import functools
import http.server
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from unet import config
from unet.config import DownloadConfig, SliceMirrorConfig
from unet.download import DownloadError, download
from unet.io import pixel_sha256

from .conftest import ROOT, project_params, synthetic

FILES = ("train-volume.tif", "train-labels.tif", "test-volume.tif")


@functools.cache
def catalogue() -> DownloadConfig:
    """ISBI 2012's download section as params.yaml holds it (the defaults name no data set): its stack names,
    sources and pixel hashes."""
    return config.loads(project_params()).download


def names() -> dict[str, object]:
    """ISBI's stack names, for the params files these tests write."""
    return {"images": list(catalogue().images), "labels": catalogue().labels}


class FlakyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files; the first ``server.times`` requests of each path fail as ``server.fault`` says:
    ``truncate`` (half the body, then a clean close), ``reset`` (half the body, then a TCP reset) or ``drop``
    (a TCP reset before any answer)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        srv.requests[self.path] += 1  # type: ignore[attr-defined]
        if srv.requests[self.path] > srv.times:  # type: ignore[attr-defined]
            return super().do_GET()
        if srv.fault != "drop":  # type: ignore[attr-defined]
            body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            if srv.fault == "truncate":  # type: ignore[attr-defined]
                return None
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()
        self.connection.close()  # linger 0: the peer gets a reset, not a clean end
        return None


@pytest.fixture
def serve():
    """Start HTTP servers on 127.0.0.1 over given directories, optionally failing the first ``times`` requests
    of each path with ``fault``; yields a function returning the base URL. ``serve.requests[url]`` counts the
    requests per path."""
    servers = []

    def start(directory: Path, fault: str = "", times: int = 0) -> str:
        handler = functools.partial(FlakyHandler, directory=str(directory))
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        srv.fault, srv.times, srv.requests = fault, times, Counter()  # type: ignore[attr-defined]
        srv.handle_error = lambda *a: None  # type: ignore[method-assign]  # the faults break its own writes
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        url = f"http://127.0.0.1:{srv.server_address[1]}/"
        start.requests[url] = srv.requests  # type: ignore[attr-defined]
        return url

    start.requests = {}  # type: ignore[attr-defined]
    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def stall():
    """TCP servers on 127.0.0.1 that accept connections and never answer; yields a function returning a URL."""
    listeners, held = [], []

    def start() -> str:
        srv = socket.create_server(("127.0.0.1", 0), backlog=64)
        listeners.append(srv)

        def accept() -> None:
            while True:
                try:
                    held.append(srv.accept()[0])
                except OSError:
                    return

        threading.Thread(target=accept, daemon=True).start()
        return f"http://127.0.0.1:{srv.getsockname()[1]}/"

    yield start
    for sock in listeners + held:
        sock.close()


def dead_url() -> str:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


def fast(**kw) -> DownloadConfig:
    """ISBI's stacks and hashes from local sources only, quickly given up."""
    quick = {"urls": (), "slice_mirrors": (), "timeout_s": 5.0, "retries": 2, "backoff_s": 0.0}
    return dataclasses.replace(catalogue(), **{**quick, **kw})


def test_good_download_from_local_http_server(isbi, serve, tmp_path):
    prov = download(fast(urls=(serve(isbi),)), tmp_path / "raw")
    for name in FILES:
        arr = tifffile.imread(tmp_path / "raw" / name)
        assert pixel_sha256(arr) == catalogue().pixel_sha256[name] == prov[name]["pixel_sha256"]
        assert prov[name]["source"].startswith("http://127.0.0.1")


def test_corrupted_file_is_rejected_and_next_source_used(isbi, serve, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(isbi, bad, ignore=shutil.ignore_patterns("*.md"))
    arr = tifffile.imread(bad / "train-volume.tif")
    arr[0, 0, 0] ^= 1  # one flipped bit in a valid TIFF: only the pixel hash can tell
    tifffile.imwrite(bad / "train-volume.tif", arr)
    raw = (bad / "test-volume.tif").read_bytes()
    (bad / "test-volume.tif").write_bytes(raw[: len(raw) // 3])  # truncated
    first, second = serve(bad), serve(isbi)
    prov = download(fast(urls=(first, second)), tmp_path / "raw")
    assert prov["train-volume.tif"]["source"] == second + "train-volume.tif"  # hash mismatch at first
    assert prov["test-volume.tif"]["source"] == second + "test-volume.tif"  # truncated at first
    assert prov["train-labels.tif"]["source"] == first + "train-labels.tif"  # intact at first
    for name in FILES:
        assert pixel_sha256(tifffile.imread(tmp_path / "raw" / name)) == catalogue().pixel_sha256[name]


def test_dead_server_and_missing_file_list_every_source(tmp_path, serve):
    empty = tmp_path / "empty"
    empty.mkdir()
    dead, missing = dead_url(), serve(empty)
    with pytest.raises(DownloadError) as err:
        download(fast(urls=(dead, missing)), tmp_path / "raw", local_dir=str(empty))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("train-volume.tif: no source gave a valid copy")
    assert f"{empty}/train-volume.tif: no such file" in msg
    assert dead in msg and "refused" in msg.lower()
    assert f"{missing}train-volume.tif: HTTP 404" in msg
    assert not (tmp_path / "raw").exists()


def _slices(stack: np.ndarray, folder: Path, suffix: str) -> None:
    folder.mkdir(parents=True)
    for i, page in enumerate(stack):
        if suffix == ".png":
            Image.fromarray(page).save(folder / f"{i}.png")
        else:
            tifffile.imwrite(folder / f"{i}.tif", page)


MIRROR = {
    "train-volume.tif": "train/image/{i}.png",
    "train-labels.tif": "train/label/{i}.png",
    "test-volume.tif": "test/{i}.png",
}


@pytest.fixture(scope="module")
def isbi_slices(isbi, tmp_path_factory) -> Path:
    """The real ISBI stacks as one PNG per slice, laid out as the zhixuhao/unet mirror holds them."""
    root = tmp_path_factory.mktemp("slices")
    for name, template in MIRROR.items():
        _slices(tifffile.imread(isbi / name), root / Path(template).parent, ".png")
    return root


def test_isbi_from_per_slice_mirrors_verified_by_the_same_pixel_hash(isbi_slices, serve, tmp_path, caplog):
    gappy = tmp_path / "gappy"
    shutil.copytree(isbi_slices, gappy)
    (gappy / "train" / "label" / "29.png").unlink()  # the first mirror lacks the last label slice
    first, second = serve(gappy), serve(isbi_slices)
    mirrors = tuple(SliceMirrorConfig(30, {n: base + t for n, t in MIRROR.items()}) for base in (first, second))
    prov = download(fast(urls=(), slice_mirrors=mirrors), tmp_path / "raw")
    for name in FILES:  # multi-page TIFFs whose pixels are the official stacks' (slices 10..29 after 9)
        assert pixel_sha256(tifffile.imread(tmp_path / "raw" / name)) == catalogue().pixel_sha256[name]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(FILES)
    assert prov["train-volume.tif"]["source"] == first + "train/image/{i}.png (30 slices)"
    assert prov["train-labels.tif"]["source"] == second + "train/label/{i}.png (30 slices)"
    assert f"{first}train/label/{{i}}.png (30 slices): slice 29: HTTP 404" in caplog.text


def test_local_dir_holds_each_stack_as_a_tiff_or_a_folder_of_slices(isbi, isbi_slices, tmp_path):
    local = tmp_path / "local"
    shutil.copytree(isbi_slices / "train" / "image", local / "train-volume")  # 0.png .. 29.png
    _slices(tifffile.imread(isbi / "train-labels.tif"), local / "train-labels", ".tif")  # 0.tif .. 29.tif
    shutil.copy(isbi / "test-volume.tif", local)
    prov = download(fast(urls=()), tmp_path / "raw", local_dir=str(local))
    for name in FILES:
        assert pixel_sha256(tifffile.imread(tmp_path / "raw" / name)) == catalogue().pixel_sha256[name]
    assert prov["train-volume.tif"]["source"] == f"{local}/train-volume/"
    assert prov["test-volume.tif"]["source"] == f"{local}/test-volume.tif"
    shutil.copy(isbi / "train-volume.tif", local)  # now both a TIFF and a folder: ambiguous
    with pytest.raises(DownloadError, match=r"train-volume.tif: both train-volume.tif and train-volume/ exist"):
        download(fast(urls=()), tmp_path / "raw2", local_dir=str(local))
    assert not (tmp_path / "raw2").exists()


@pytest.mark.parametrize(("fault", "seen"), [("truncate", "Content-Length"), ("reset", "reset"), ("drop", "")])
def test_broken_transfers_are_retried(isbi, serve, tmp_path, caplog, fault, seen):
    url = serve(isbi, fault=fault, times=1)  # every file fails once, then arrives whole
    prov = download(fast(urls=(url,)), tmp_path / "raw")
    for name in FILES:
        assert pixel_sha256(tifffile.imread(tmp_path / "raw" / name)) == prov[name]["pixel_sha256"]
        assert prov[name]["pixel_sha256"] == catalogue().pixel_sha256[name]
        assert serve.requests[url][f"/{name}"] == 2
    assert caplog.text.count("retry 1/1") == 3 and seen in caplog.text


def test_a_failing_host_is_not_retried_for_the_next_files(isbi, serve, tmp_path):
    bad, good = serve(isbi, fault="reset", times=99), serve(isbi)
    prov = download(fast(urls=(bad, good), retries=3), tmp_path / "raw")
    assert all(p["source"] == good + name for name, p in prov.items())
    assert dict(serve.requests[bad]) == {"/train-volume.tif": 3}  # three attempts for the first file only


def test_a_body_always_short_fails_in_one_line_with_no_output(isbi, serve, tmp_path):
    url = serve(isbi, fault="truncate", times=99)
    with pytest.raises(DownloadError) as err:
        download(fast(urls=(url,)), tmp_path / "raw")
    msg = str(err.value)
    assert "\n" not in msg and f"{url}train-volume.tif: ShortTransfer: body of " in msg
    assert "Content-Length 7869390" in msg and msg.endswith("(2 attempts)")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no partial output, no temporary left


def test_a_network_that_answers_nothing_fails_within_the_budget(stall, tmp_path):
    a, b, c = stall(), stall(), stall()  # accept, never answer
    quick = {"connect_timeout_s": 0.5, "timeout_s": 0.5, "retries": 3, "backoff_s": 0.1, "budget_s": 2.0}
    mirror = {"slices": 3, "files": {"train-volume.tif": c + "{i}.png"}}
    cfg = dataclasses.replace(catalogue(), urls=(a, b), slice_mirrors=(SliceMirrorConfig(**mirror),), **quick)
    start = time.monotonic()
    with pytest.raises(DownloadError):
        download(cfg, tmp_path / "raw")
    assert time.monotonic() - start < quick["budget_s"] + 1.0  # 3 hosts x 3 attempts would take 5.4 s

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"download": {"urls": [a, b], "slice_mirrors": [mirror], **names(), **quick}}))
    r = subprocess.run(
        [sys.executable, "-m", "unet.stages.download", "--params", str(params), "--out", str(tmp_path / "raw")],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert last.startswith("download: error: train-volume.tif: no source gave a valid copy; tried: ")
    assert f"{a}train-volume.tif: TimeoutError: timed out (3 attempts); {b}train-volume.tif: " in last
    assert c + "{i}.png (3 slices): not tried: download.budget_s (2 s) spent on failed attempts" in last
    assert "set ISBI_DATA_DIR (or download.local_dir) to a directory holding train-volume.tif" in last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def _write_set(d: Path, images: np.ndarray, labels: np.ndarray, test: np.ndarray | None = None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    rgb = images.ndim == 4  # else grey pages (tifffile would tag a 3-page stack RGB)
    photometric = "rgb" if rgb else "minisblack"
    tifffile.imwrite(d / "train-volume.tif", images, photometric=photometric)
    tifffile.imwrite(d / "train-labels.tif", labels, photometric="minisblack")
    tifffile.imwrite(d / "test-volume.tif", images if test is None else test, photometric=photometric)


def _bad_sets(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    images, labels = synthetic(4, 32)
    cases = {}

    def case(name, expect, **override):
        d = tmp_path / name
        _write_set(d, override.get("images", images), override.get("labels", labels))
        if "raw" in override:
            (d / override["raw"][0]).write_bytes(override["raw"][1])
        cases[name] = (d, expect)

    good = (tmp_path / "good.tif").as_posix()
    tifffile.imwrite(good, images)
    body = Path(good).read_bytes()
    case("truncated", "train-volume.tif: unreadable or truncated TIFF", raw=("train-volume.tif", body[:2000]))
    case("not_tiff", "train-volume.tif: not a TIFF file", raw=("train-volume.tif", b"P5\n32 32\n255\n" + b"x" * 64))
    case("empty", "train-volume.tif: empty file", raw=("train-volume.tif", b""))
    case(
        "rgb",
        "train-volume.tif: RGB image of shape (4, 32, 32, 3) (axes QYXS): its colour channels differ",
        images=np.stack([images, 255 - images, images], -1),
    )
    case("length", "does not match", labels=labels[:3])
    case("size", "does not match", labels=labels[:, :30, :30])
    three = labels.copy()
    three[0, :4, :4] = 128
    case("three_values", "labels have 3 distinct values (0, 128, 255)", labels=three)
    nan = images.astype(np.float32)
    nan[2, 5, 5] = np.nan
    case("nan", "NaN/Inf values in slices 2", images=nan)
    return cases


def test_each_bad_input_is_one_line_naming_the_file_with_no_output(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"download": {"urls": [], "slice_mirrors": [], "pixel_sha256": {}, **names()}}))
    for name, (d, expect) in _bad_sets(tmp_path).items():
        out = tmp_path / f"out_{name}"
        r = subprocess.run(
            [sys.executable, "-m", "unet.stages.download", "--params", str(params), "--out", str(out)],
            env={"ISBI_DATA_DIR": str(d), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 1, (name, r.stderr)
        assert last.startswith("download: error: ") and expect in last, (name, last)
        assert ".tif" in last, (name, last)
        assert not out.exists() and not list(tmp_path.glob(f".out_{name}*")), name


def test_unknown_params_key_is_one_line_error(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("download:\n  mirror: x\n")
    r = subprocess.run(
        [sys.executable, "-m", "unet.stages.download", "--params", str(params), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 1
    assert r.stderr.strip() == "download: error: download.mirror: unknown key (valid keys: backoff_s, " + (
        "budget_s, connect_timeout_s, images, labels, local_dir, pixel_sha256, retries, slice_mirrors, timeout_s, urls)"
    )


def test_a_name_lookup_that_hangs_is_bounded_by_the_connect_timeout(monkeypatch, tmp_path):
    def hang(*args, **kwargs):  # a resolver on a network that answers nothing
        time.sleep(5)
        raise socket.gaierror("unreachable")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    cfg = fast(urls=("http://isbi.invalid/",), connect_timeout_s=0.3, retries=2, budget_s=10.0)
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download(cfg, tmp_path / "raw")
    assert time.monotonic() - start < 1.5  # two attempts of 0.3 s, not two lookups of 5 s
    assert str(err.value).endswith(
        "http://isbi.invalid/train-volume.tif: TimeoutError: name lookup of isbi.invalid timed out after 0.3 s "
        "(2 attempts)"
    )


def test_a_bad_slice_in_a_folder_is_named(tmp_path):
    images, labels = synthetic(4, 32)
    local = tmp_path / "local"
    _write_set(local, images, labels)
    (local / "train-volume.tif").unlink()
    _slices(images, local / "train-volume", ".png")
    Image.fromarray(images[0, :30]).save(local / "train-volume" / "10.png")
    with pytest.raises(DownloadError) as err:
        download(fast(urls=(), pixel_sha256={}), tmp_path / "raw", local_dir=str(local))
    assert str(err.value) == (
        f"train-volume.tif: no source gave a valid copy; tried: {local}/train-volume/10.png: slice of 30x32 uint8; "
        "the first is 32x32 uint8"
    )
    assert not (tmp_path / "raw").exists()


def test_an_isbi_data_dir_that_overrides_download_local_dir_is_named_in_the_error(tmp_path):
    (tmp_path / "env-dir").mkdir()
    (tmp_path / "key-dir").mkdir()
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {"download": {"urls": [], "slice_mirrors": [], "local_dir": str(tmp_path / "key-dir"), **names()}}
        )
    )
    r = subprocess.run(
        [sys.executable, "-m", "unet.stages.download", "--params", str(params), "--out", str(tmp_path / "raw")],
        env={"PATH": "/usr/bin:/bin", "ISBI_DATA_DIR": str(tmp_path / "env-dir")},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and last.startswith("download: error: train-volume.tif: no source gave a valid copy")
    env, key = tmp_path / "env-dir", tmp_path / "key-dir"
    assert f"ISBI_DATA_DIR is set ({env}, which overrides download.local_dir {key}): set it to a directory" in last
    assert not (tmp_path / "raw").exists()
