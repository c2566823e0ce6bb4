"""DVC remotes other than a local folder: ``dvc push`` to an ``ssh://`` remote (an sshd this test starts on
127.0.0.1 with its own host key and authorized key) and ``dvc pull`` into a fresh clone."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_pipeline import git_env

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An OpenSSH server on 127.0.0.1:<free port> that lets this user in with a key made here: (port, key)."""
    if not os.path.exists(SSHD):
        if os.environ.get("CI"):  # .ci/run installs openssh-server: never pass by skipping
            pytest.fail(f"{SSHD} not found (Debian: apt-get install openssh-server)")
        pytest.skip(f"{SSHD} not found (Debian: apt-get install openssh-server)")
    d = tmp_path / "sshd"
    d.mkdir()
    for name in ("host", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "user.pub", d / "authorized_keys")
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
    )
    if os.geteuid() == 0:  # sshd run by root insists on its privilege-separation directory, made at boot
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-E", str(d / "log"), "-f", str(d / "sshd_config")])
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (d / "log").read_text() if (d / "log").exists() else "sshd exited"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "sshd did not start listening"
            time.sleep(0.05)
        yield port, d / "user"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run(cwd: Path, *cmd: str, home: Path) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=git_env(HOME=str(home)))
    assert r.returncode == 0, f"{' '.join(cmd)}: {r.stdout[-2000:]}{r.stderr[-3000:]}"
    return r.stdout


@pytest.mark.slow
def test_push_to_an_ssh_remote_and_pull_into_a_fresh_clone(sshd, tmp_path):
    port, key = sshd
    home = tmp_path / "home"  # no ~/.ssh or DVC/git config of the user's
    home.mkdir()
    repo, store = tmp_path / "repo", tmp_path / "store"
    repo.mkdir()
    run(repo, "git", "init", "-q", home=home)
    run(repo, "dvc", "init", "-q", home=home)
    data = os.urandom(50_000)
    (repo / "data").mkdir()
    (repo / "data" / "stack.bin").write_bytes(data)
    run(repo, "dvc", "add", "-q", "data/stack.bin", home=home)
    run(repo, "dvc", "remote", "add", "-d", "shared", f"ssh://{getpass.getuser()}@127.0.0.1:{port}{store}", home=home)
    run(repo, "dvc", "remote", "modify", "--local", "shared", "keyfile", str(key), home=home)  # not committed
    run(repo, "git", "add", "-A", home=home)
    run(repo, "git", "commit", "-qm", "data on an ssh remote", home=home)
    run(repo, "dvc", "push", home=home)
    assert [p.stat().st_size for p in store.rglob("*") if p.is_file()] == [len(data)]  # arrived over sftp

    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(repo), str(clone), home=home)
    assert not (clone / "data" / "stack.bin").exists()
    run(clone, "dvc", "remote", "modify", "--local", "shared", "keyfile", str(key), home=home)
    run(clone, "dvc", "pull", home=home)
    assert (clone / "data" / "stack.bin").read_bytes() == data
    assert "up to date" in run(clone, "dvc", "status", home=home)
