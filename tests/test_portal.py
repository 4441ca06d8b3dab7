"""weft-file-portal as a real process on a Unix socket: the reference protocol, no escapes."""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from platform_support import wait_for

from weft.daemons.protocol import PORTAL_MAX_FILE_BYTES, PORTAL_MAX_REQUEST_BYTES


class PortalConnection:
    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.rfile = self.sock.makefile("rb")

    def raw(self, line: bytes) -> object:
        self.sock.sendall(line)
        return json.loads(self.rfile.readline())

    def ask(self, **request: str) -> object:
        return self.raw(json.dumps(request).encode() + b"\n")


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    rw, ro, outside = tmp_path / "rw", tmp_path / "ro", tmp_path / "outside"
    for d in (rw, ro, outside):
        d.mkdir()
    (outside / "secret.txt").write_text("secret")
    (ro / "readme.txt").write_text("read me")
    (rw / "inside.txt").write_text("inside")
    (rw / "sub").mkdir()
    os.symlink(outside / "secret.txt", rw / "abs-link")
    os.symlink("../outside/secret.txt", rw / "rel-link")
    os.symlink(outside, rw / "dir-link")
    os.symlink("inside.txt", rw / "ok-link")
    return {"rw": rw, "ro": ro, "outside": outside}


def _try_connect(path: Path) -> PortalConnection | None:
    try:
        return PortalConnection(path)
    except (FileNotFoundError, ConnectionRefusedError):
        return None


@pytest.fixture
def portal(tree: dict[str, Path], tmp_path: Path) -> Iterator[PortalConnection]:
    path = tmp_path / "portal.sock"
    process = subprocess.Popen([sys.executable, "-m", "weft.daemons.file_portal", str(path),
                                "--allow", str(tree["rw"]), "--allow-read", str(tree["ro"])])
    try:  # bound is not yet listening: connect until it is
        connection = wait_for(lambda: _try_connect(path), what="portal socket")
    except BaseException:
        process.kill()
        process.wait()
        raise
    assert isinstance(connection, PortalConnection)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    yield connection
    process.terminate()
    assert process.wait(10) == 0
    assert not path.exists()


def test_read_write_list_inside_the_roots(portal, tree):
    assert portal.ask(op="read", path=str(tree["rw"] / "inside.txt")) == {
        "data_b64": base64.b64encode(b"inside").decode()}
    assert portal.ask(op="write", path=str(tree["rw"] / "new/deeper/file.txt"),
                      data_b64=base64.b64encode(b"hello").decode()) is None
    assert (tree["rw"] / "new/deeper/file.txt").read_bytes() == b"hello"
    assert portal.ask(op="list", path=str(tree["rw"] / "new")) == {"entries": ["deeper"]}
    assert portal.ask(op="write", path=str(tree["rw"] / "ok-link"), data_b64="eA==")["error"].startswith(
        "Too many levels")  # writes never go through a symlink
    assert portal.ask(op="read", path=str(tree["ro"] / "readme.txt")) == {
        "data_b64": base64.b64encode(b"read me").decode()}
    assert portal.ask(op="read", path=str(tree["rw"] / "ok-link")) == {
        "data_b64": base64.b64encode(b"inside").decode()}  # a symlink that stays inside is fine


@pytest.mark.parametrize("inner", [
    "abs-link", "rel-link", "dir-link/secret.txt", "../outside/secret.txt", "sub/../../outside/secret.txt",
])
def test_escapes_from_a_root_are_denied(portal, tree, inner):
    reply = portal.ask(op="read", path=f"{tree['rw']}/{inner}")
    assert reply["error"].startswith("access denied")


def test_writes_through_escaping_links_are_denied(portal, tree):
    for inner in ("abs-link", "dir-link/planted.txt", "../outside/planted.txt"):
        reply = portal.ask(op="write", path=f"{tree['rw']}/{inner}", data_b64="eA==")
        assert "error" in reply, inner
    assert (tree["outside"] / "secret.txt").read_text() == "secret"
    assert not (tree["outside"] / "planted.txt").exists()


@pytest.mark.parametrize("path", ["/etc/passwd", "relative/path", "", "/"])
def test_paths_outside_every_root_are_denied(portal, path):
    assert portal.ask(op="read", path=path)["error"].startswith("access denied")


def test_read_only_root_refuses_writes(portal, tree):
    reply = portal.ask(op="write", path=str(tree["ro"] / "readme.txt"), data_b64="eA==")
    assert reply == {"error": f"access denied: {tree['ro']} is read-only"}
    assert (tree["ro"] / "readme.txt").read_text() == "read me"


def test_size_limits(portal, tree):
    (tree["rw"] / "big.bin").write_bytes(b"\0" * (PORTAL_MAX_FILE_BYTES + 1))
    assert "larger than" in portal.ask(op="read", path=str(tree["rw"] / "big.bin"))["error"]
    too_big = base64.b64encode(b"\0" * (PORTAL_MAX_FILE_BYTES + 1)).decode()
    assert "larger than" in portal.ask(op="write", path=str(tree["rw"] / "x"), data_b64=too_big)["error"]
    assert not (tree["rw"] / "x").exists()
    assert portal.raw(b"x" * (PORTAL_MAX_REQUEST_BYTES + 10)) == {"error": "request too large"}
    assert portal.rfile.readline() == b""  # and the connection is closed


def test_bad_requests_get_errors_and_the_connection_survives(portal, tree):
    assert portal.raw(b"not json\n")["error"].startswith("bad request")
    assert portal.ask(op="delete", path=str(tree["rw"]))["error"].startswith("bad request")
    assert portal.ask(op="write", path=str(tree["rw"] / "x"), data_b64="***")["error"].startswith("bad base64")
    assert portal.ask(op="read", path=str(tree["rw"] / "missing"))["error"].startswith("No such file")
    assert portal.ask(op="list", path=str(tree["rw"] / "inside.txt"))["error"].startswith("Not a directory")
    assert "data_b64" in portal.ask(op="read", path=str(tree["rw"] / "inside.txt"))


def test_cli_usage_errors_are_clear(tmp_path):
    for argv, message in (([], "give either a socket path or --fd"),
                          ([str(tmp_path / "s"), "--allow", "relative"], "must be an absolute path"),
                          ([str(tmp_path / "s"), "--allow", str(tmp_path / "missing")], "cannot open root")):
        result = subprocess.run([sys.executable, "-m", "weft.daemons.file_portal", *argv],
                                capture_output=True, text=True, timeout=10)
        assert result.returncode != 0
        assert message in result.stderr
        assert "Traceback" not in result.stderr
