"""weft-file-portal in --fd mode (as the runtime starts it) against hostile trees and a dying parent."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from platform_support import wait_for


class FdPortal:
    """A portal serving one end of a socketpair, like the runtime's."""

    def __init__(self, root: Path):
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen([sys.executable, "-m", "weft.daemons.file_portal", "--fd", str(theirs.fileno()),
                                         "--allow", str(root)], pass_fds=[theirs.fileno()], stderr=subprocess.PIPE)
        theirs.close()
        ours.settimeout(5)  # a request that blocks the portal fails the test instead of hanging it
        self.sock, self.rfile = ours, ours.makefile("rb")

    def ask(self, **request: str) -> dict:
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        reply = json.loads(self.rfile.readline())
        return {} if reply is None else reply

    def close(self) -> str:
        self.rfile.close()
        self.sock.close()
        assert self.process.wait(10) == 0
        assert self.process.stderr is not None
        return self.process.stderr.read().decode()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "good.txt").write_text("good")
    return root


@pytest.fixture
def portal(root: Path) -> Iterator[FdPortal]:
    running = FdPortal(root)
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait()


def test_writing_the_root_itself_is_an_error_and_the_portal_keeps_serving(portal: FdPortal, root: Path) -> None:
    assert portal.ask(op="write", path=str(root), data_b64="eA==") == {"error": f"not a regular file: {root}"}
    assert portal.ask(op="write", path=f"{root}/", data_b64="eA==")["error"].startswith("not a regular file")
    assert portal.ask(op="list", path=str(root))["entries"] == ["good.txt"]
    assert "Traceback" not in portal.close()


def test_fifos_and_sockets_are_refused_without_blocking(portal: FdPortal, root: Path) -> None:
    os.mkfifo(root / "fifo")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "sock"))
    started = time.monotonic()
    assert portal.ask(op="read", path=f"{root}/fifo") == {"error": f"not a regular file: {root}/fifo"}
    assert portal.ask(op="write", path=f"{root}/fifo", data_b64="eA==") == {
        "error": f"not a regular file: {root}/fifo"}  # no reader: the open would have blocked
    reader = os.open(root / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert portal.ask(op="write", path=f"{root}/fifo", data_b64="eA==") == {
            "error": f"not a regular file: {root}/fifo"}  # with a reader: opened, then refused by type
        assert os.read(reader, 10) == b""
    finally:
        os.close(reader)
    for request in ({"op": "read"}, {"op": "write", "data_b64": "eA=="}):
        assert portal.ask(**request, path=f"{root}/sock") == {"error": f"not a regular file: {root}/sock"}
    assert time.monotonic() - started < 3
    assert portal.ask(op="read", path=f"{root}/good.txt") == {"data_b64": "Z29vZA=="}
    listener.close()


def test_names_that_are_not_utf8_are_left_out_of_listings(portal: FdPortal, root: Path) -> None:
    os.close(os.open(os.fsencode(root) + b"/bad-\xff.txt", os.O_WRONLY | os.O_CREAT, 0o600))
    assert portal.ask(op="list", path=str(root)) == {"entries": ["good.txt"], "skipped_non_utf8": 1}


PARENT = textwrap.dedent("""
    import json, socket, subprocess, sys, time
    ours, theirs = socket.socketpair()
    portal = subprocess.Popen([sys.executable, "-m", "weft.daemons.file_portal", "--fd", str(theirs.fileno()),
                               "--allow", sys.argv[1]], pass_fds=[theirs.fileno()])
    ours.sendall(b'{"op": "list", "path": "' + sys.argv[1].encode() + b'"}\\n')
    ours.makefile("rb").readline()  # the portal is up (and has set its parent-death signal)
    print(portal.pid, flush=True)
    time.sleep(60)
""")


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
    except FileNotFoundError:
        return True
    return state in "ZX"


def test_the_portal_dies_with_its_parent_even_when_stuck(root: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(root)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    portal_pid = int(parent.stdout.readline())
    try:
        os.kill(portal_pid, signal.SIGSTOP)  # stuck: it could not even notice its socket closing
        parent.kill()
        parent.wait()
        wait_for(lambda: _gone(portal_pid), timeout=5, what="the portal to die with its parent")
    finally:
        if not _gone(portal_pid):
            os.kill(portal_pid, signal.SIGKILL)
