"""appd under a descriptor flood: half-open WebSocket handshakes must not starve launches."""
from __future__ import annotations

import contextlib
import json
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from platform_support import Appd, Env, wait_for
from websockets.sync.client import connect

from weft.daemons import protocol

APPD_NOFILE = 256  # appd's soft descriptor limit in this test: the flood below is larger
FLOOD = 400  # half-open connections held open at once (loopback only)


@pytest.fixture
def installed(env: Env, built_apps: dict[str, Path]) -> Env:
    env.install(built_apps["org.weft.demo.counter"])
    return env


def start_with_nofile(appd_factory: Callable[..., Appd], limit: int) -> Appd:
    """appd inherits a soft RLIMIT_NOFILE of `limit` (the test process keeps its own)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        return appd_factory()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def half_open_flood(port: int, count: int) -> Iterator[list[int]]:
    """Keep `count` TCP connections to `port` open that never finish the HTTP upgrade; reconnect
    whichever appd closes. Yields a one-item list counting the connections made."""
    made = [0]
    stop = threading.Event()
    socks: list[socket.socket] = []

    def keep_open() -> None:
        while not stop.is_set():
            for i, sock in enumerate(socks):
                if stop.is_set():
                    return
                try:
                    closed = sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
                except BlockingIOError:
                    closed = False
                except OSError:
                    closed = True
                if closed:
                    sock.close()
                    socks[i] = opener()
            time.sleep(0.05)

    def opener() -> socket.socket:
        sock = socket.socket()
        sock.settimeout(0.5)  # appd may not be accepting: do not hang on a full backlog
        try:
            sock.connect(("127.0.0.1", port))
            sock.sendall(b"GET /appd?token=")  # a request line that never ends
        except OSError:
            pass
        made[0] += 1
        return sock

    socks.extend(opener() for _ in range(count))
    thread = threading.Thread(target=keep_open, daemon=True)
    thread.start()
    try:
        yield made
    finally:
        stop.set()
        thread.join()
        for sock in socks:
            sock.close()


def test_half_open_handshake_flood_does_not_starve_launches(installed, appd_factory):
    appd = start_with_nofile(appd_factory, APPD_NOFILE)
    with half_open_flood(appd.ws_port, FLOOD) as made:
        time.sleep(1.5)  # let appd accept what it can; the old appd ran out of descriptors here
        started = time.monotonic()
        sid = appd.launch("org.weft.demo.counter", timeout=10)
        assert appd.roundtrip(sid, "increment") == '{"count":1}'
        assert time.monotonic() - started < 5
        # a real WebSocket client still gets through: pending handshakes are evicted oldest first
        with connect(appd.ws_url(), open_timeout=5) as ws:
            ws.send(json.dumps({"type": "QUERY_RUNNING"}))
            assert json.loads(ws.recv(timeout=5))["type"] == "RUNNING_APPS"
        time.sleep(1.0)
        assert made[0] > FLOOD  # appd closed (evicted) half-open connections while the flood went on
    log = appd.log.read_text()
    assert log.count("Traceback") == 0, log[-3000:]
    assert log.count("\n") < 50, log[-3000:]  # a few lines, not a storm
    running = appd.request(protocol.QueryRunning())
    assert isinstance(running, protocol.RunningApps) and running.sessions[0].session_id == sid


def test_out_of_descriptors_is_reported_calmly_and_appd_recovers(installed, appd_factory):
    appd = start_with_nofile(appd_factory, 48)  # fewer than the pending handshakes allowed: accept hits EMFILE
    with half_open_flood(appd.ws_port, 100):
        wait_for(lambda: "cannot accept connections: Too many open files" in appd.log.read_text(),
                 what="the EMFILE warning")
        time.sleep(2)
    sid = appd.launch("org.weft.demo.counter", timeout=20)  # once the flood is gone, everything works again
    assert appd.roundtrip(sid, "get") == '{"count":0}'
    log = appd.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert log.count("cannot accept connections") <= 2, log[-3000:]  # once per interval, not per attempt
