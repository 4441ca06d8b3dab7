"""appd's runtime directory: used only when it is ours and private; nothing written through symlinks."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from platform_support import Appd, Env

from weft.daemons.appd.runtime_dir import RuntimeDir, UntrustedDirectory

OTHER_UID = 65534


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file another user would like appd to overwrite."""
    path = tmp_path / "victim"
    path.write_text("precious\n")
    return path


def test_creates_a_private_directory(tmp_path: Path) -> None:
    runtime = RuntimeDir.open(tmp_path / "weft")
    try:
        assert (tmp_path / "weft").stat().st_mode & 0o777 == 0o700
    finally:
        runtime.close()


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702, 0o1777])
def test_refuses_a_directory_others_can_write(tmp_path: Path, mode: int) -> None:
    (tmp_path / "weft").mkdir()
    os.chmod(tmp_path / "weft", mode)
    with pytest.raises(UntrustedDirectory, match="lets other users write"):
        RuntimeDir.open(tmp_path / "weft")


def test_refuses_a_directory_of_another_user(tmp_path: Path) -> None:
    (tmp_path / "weft").mkdir(mode=0o700)
    os.chown(tmp_path / "weft", OTHER_UID, OTHER_UID)
    with pytest.raises(UntrustedDirectory, match=f"belongs to uid {OTHER_UID}"):
        RuntimeDir.open(tmp_path / "weft")


def test_refuses_a_symlinked_directory(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "weft").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UntrustedDirectory, match="symlink"):
        RuntimeDir.open(tmp_path / "weft")


@pytest.mark.parametrize("mode, owner, message", [
    (0o777, None, "mode 0777) lets other users replace it"),
    (0o770, None, "mode 0770) lets other users replace it"),
    (0o755, OTHER_UID, f"belongs to uid {OTHER_UID}, who could replace it"),
])
def test_refuses_a_parent_where_others_could_swap_the_directory(tmp_path: Path, mode: int, owner: int | None,
                                                               message: str) -> None:
    """In a parent others may write (without the sticky bit), another user renames appd's checked
    directory away and puts their own in its place, with a socket and a token of their own."""
    parent = tmp_path / "xdg"
    parent.mkdir()
    os.chmod(parent, mode)
    if owner is not None:
        os.chown(parent, owner, owner)
    with pytest.raises(UntrustedDirectory, match=re.escape(message)):
        RuntimeDir.open(parent / "weft")
    assert not (parent / "weft").exists()


def test_a_sticky_world_writable_parent_is_fine(tmp_path: Path) -> None:
    parent = tmp_path / "tmp"
    parent.mkdir()
    os.chmod(parent, 0o1777)  # as /tmp: others cannot rename what is ours
    RuntimeDir.open(parent / "weft").close()


def test_writes_replace_planted_symlinks_instead_of_following_them(tmp_path: Path, victim: Path) -> None:
    runtime = RuntimeDir.open(tmp_path / "weft")
    try:
        (tmp_path / "weft/appd.wsport").symlink_to(victim)
        runtime.write_text("appd.wsport", "7410")
        assert victim.read_text() == "precious\n"
        assert not (tmp_path / "weft/appd.wsport").is_symlink()
        assert (tmp_path / "weft/appd.wsport").read_text() == "7410"
        assert (tmp_path / "weft/appd.wsport").stat().st_mode & 0o777 == 0o600
        assert sorted(os.listdir(tmp_path / "weft")) == ["appd.wsport"]  # no temporary left behind
    finally:
        runtime.close()


def test_reads_only_our_private_regular_files(tmp_path: Path, victim: Path) -> None:
    runtime = RuntimeDir.open(tmp_path / "weft")
    try:
        (tmp_path / "weft/link").symlink_to(victim)
        os.mkfifo(tmp_path / "weft/fifo", 0o600)  # would block a plain open()
        (tmp_path / "weft/public").write_text("x")
        os.chmod(tmp_path / "weft/public", 0o644)
        (tmp_path / "weft/foreign").write_text("x")
        os.chmod(tmp_path / "weft/foreign", 0o600)
        os.chown(tmp_path / "weft/foreign", OTHER_UID, OTHER_UID)
        runtime.write_text("ours", "hello")
        assert [runtime.read_private(n) for n in ("link", "fifo", "public", "foreign", "missing", "ours")] == [
            None, None, None, None, None, "hello"]
    finally:
        runtime.close()


def _start_appd(env: Env) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "weft.daemons.appd"], env=env.vars, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _exit_of(process: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"weft-appd started in an untrusted runtime directory:\n{output}")
    return process.returncode, output


@pytest.mark.parametrize("owner, mode, message", [
    (OTHER_UID, 0o700, f"belongs to uid {OTHER_UID}"),
    (None, 0o777, "mode 0777 lets other users write into it"),
])
def test_appd_refuses_an_untrusted_runtime_directory(env: Env, owner: int | None, mode: int, message: str) -> None:
    planted = env.runtime_dir / "weft"
    planted.mkdir()
    os.chmod(planted, mode)
    if owner is not None:
        os.chown(planted, owner, owner)
    code, output = _exit_of(_start_appd(env))
    assert code == 1
    assert output.startswith(f"error: refusing {planted}: ") and message in output, output
    assert "Traceback" not in output
    assert os.listdir(planted) == []


def test_appd_does_not_write_through_planted_symlinks(env: Env, victim: Path,
                                                     appd_factory: Callable[..., Appd]) -> None:
    runtime = env.runtime_dir / "weft"
    runtime.mkdir(mode=0o700)
    victim.write_text('["org.weft.demo.counter"]')
    for name in ("appd.wsport.partial", "appd.token", "last-session.json", "last-session.json.partial"):
        (runtime / name).symlink_to(victim)
    appd = appd_factory()
    assert len(appd.token) >= 32 and not (runtime / "appd.token").is_symlink()
    assert appd.stop() == 0
    assert victim.read_text() == '["org.weft.demo.counter"]'  # never read as saved sessions, never written
    assert sorted(os.listdir(runtime)) == ["appd.token", "appd.wsport", "appd.wsport.partial",
                                           "last-session.json", "last-session.json.partial"]
    assert not (runtime / "last-session.json").is_symlink()


def test_appd_refuses_a_non_socket_in_the_socket_path(env: Env) -> None:
    (env.runtime_dir / "weft").mkdir(mode=0o700)
    (env.runtime_dir / "weft/appd.sock").write_text("not a socket")
    code, output = _exit_of(_start_appd(env))
    assert code == 1 and "appd.sock exists and is not a socket" in output, output
    assert (env.runtime_dir / "weft/appd.sock").read_text() == "not a socket"
