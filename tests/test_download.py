"""download: sources in order, pixel-hash verification, retries, and one-line errors with no output."""

import functools
import http.server
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from unet.config import DownloadConfig
from unet.download import DownloadError, download
from unet.io import pixel_sha256

from .conftest import ROOT, synthetic

FILES = ("train-volume.tif", "train-labels.tif", "test-volume.tif")


@pytest.fixture
def serve():
    """Start HTTP servers on 127.0.0.1 over given directories; yields a function returning the base URL."""
    servers = []

    def start(directory: Path) -> str:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
        handler.log_message = lambda *a: None  # type: ignore[method-assign]
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def dead_url() -> str:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


def fast(**kw) -> DownloadConfig:
    return DownloadConfig(**{"timeout_s": 5.0, "retries": 2, "backoff_s": 0.0, **kw})


def test_good_download_from_local_http_server(isbi, serve, tmp_path):
    prov = download(fast(urls=(serve(isbi),)), tmp_path / "raw")
    for name in FILES:
        arr = tifffile.imread(tmp_path / "raw" / name)
        assert pixel_sha256(arr) == DownloadConfig().pixel_sha256[name] == prov[name]["pixel_sha256"]
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
        assert pixel_sha256(tifffile.imread(tmp_path / "raw" / name)) == DownloadConfig().pixel_sha256[name]


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


def _write_set(d: Path, images: np.ndarray, labels: np.ndarray, test: np.ndarray | None = None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(d / "train-volume.tif", images)
    tifffile.imwrite(d / "train-labels.tif", labels)
    tifffile.imwrite(d / "test-volume.tif", images if test is None else test)


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
    case("rgb", "RGB/multichannel stack", images=np.stack([images] * 3, -1))
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
    params.write_text(yaml.safe_dump({"download": {"urls": [], "pixel_sha256": {}}}))
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
        "images, labels, local_dir, pixel_sha256, retries, timeout_s, urls)"
    )
