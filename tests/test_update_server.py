"""weft-update-server serves the top level of a directory, read-only, and nothing else — run for
real: with --listen, and socket-activated as its unit starts it (systemd-socket-activate passes
the listening socket the way PID 1 does)."""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

VENV_BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, b""


def _wait_until_serving(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail("weft-update-server did not listen")


@pytest.fixture
def medium(tmp_path: Path) -> Path:
    root = tmp_path / "medium"
    root.mkdir()
    (root / "SHA256SUMS").write_text("abc  weft_2.efi\n")
    (root / "weft_2.efi").write_bytes(b"\x00" * 4096 + b"uki")
    (root / "sub").mkdir()
    (root / "sub" / "inner").write_text("not served")
    (root / ".hidden").write_text("not served")
    (tmp_path / "outside").write_text("secret")
    return root


@pytest.fixture(params=["listen", "socket-activated"])
def server(request: pytest.FixtureRequest, medium: Path) -> Iterator[int]:
    port = _free_port()
    program = [str(VENV_BIN / "weft-update-server"), "--directory", str(medium)]
    if request.param == "listen":
        argv = [*program, "--listen", f"127.0.0.1:{port}"]
    else:
        activate = shutil.which("systemd-socket-activate")
        assert activate, "systemd-socket-activate (package systemd) is missing"
        argv = [activate, "--listen", f"127.0.0.1:{port}", *program]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_until_serving(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def test_serves_the_files_at_the_top_level(server: int, medium: Path) -> None:
    assert _get(server, "/SHA256SUMS") == (200, b"abc  weft_2.efi\n")
    assert _get(server, "/weft_2.efi") == (200, (medium / "weft_2.efi").read_bytes())


@pytest.mark.parametrize("path", ["/", "/sub/", "/sub/inner", "/.hidden", "/../outside", "/%2e%2e/outside",
                                  "/%2e%2e%2foutside", "/missing"])
def test_nothing_else(server: int, path: str) -> None:
    assert _get(server, path)[0] == 404


def test_writes_are_refused(server: int) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{server}/SHA256SUMS", data=b"x", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 501


def test_without_a_socket_from_systemd_it_says_what_to_do(medium: Path) -> None:
    done = subprocess.run([str(VENV_BIN / "weft-update-server"), "--directory", str(medium)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "no socket from systemd" in done.stderr and "Traceback" not in done.stderr


def test_a_bad_listen_address_is_a_usage_error() -> None:
    done = subprocess.run([str(VENV_BIN / "weft-update-server"), "--listen", "nonsense"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "HOST:PORT" in done.stderr
