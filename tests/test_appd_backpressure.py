"""appd's memory while an app floods IPC and a client does not read: bounded in bytes."""
from __future__ import annotations

import base64
import json
import os
import socket
import time
from pathlib import Path

import pytest
from platform_support import Appd, Env, wait_for
from websockets.sync.client import connect

from weft.daemons import protocol

FLOOD_MESSAGES = 400  # × 256 KiB: ~100 MiB broadcast to each control client
BIG = "x" * (protocol.MAX_PAYLOAD_BYTES - len("echo:"))
MAX_GROWTH_MIB = 32  # a client's queue (8 MiB), the mailbox (2 MiB), messages in flight


@pytest.fixture
def installed(env: Env, built_apps: dict[str, Path]) -> Env:
    env.install(built_apps["org.weft.test.probe"])
    return env


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def silent_websocket(appd: Appd) -> socket.socket:
    """A control WebSocket that completes the handshake and then never reads a byte."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # let little hide in the kernel
    sock.settimeout(10)
    sock.connect(("127.0.0.1", appd.ws_port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /appd?token={appd.token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def disconnected(sock: socket.socket, timeout: float = 15.0) -> bool:
    """Read what appd managed to send; True once it closed the connection."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            if not sock.recv(1 << 20):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def test_a_client_that_does_not_read_is_dropped_and_appd_memory_stays_bounded(installed, appd_factory):
    appd = appd_factory()
    sid = appd.launch("org.weft.test.probe")
    assert appd.roundtrip(sid, "echo:warm-up") == "warm-up"
    before = peak_rss_mib(appd.process.pid)
    slow = silent_websocket(appd)
    with connect(appd.ws_url(), max_size=None) as reader, appd.client() as flooder:
        for _ in range(FLOOD_MESSAGES):
            sent = flooder.request(protocol.IpcForward(session_id=sid, payload="echo:" + BIG))
            assert isinstance(sent, protocol.AppState), sent
            # pace the flood by a client that does read: it sees every message and keeps working
            while True:
                message = json.loads(reader.recv(timeout=20))
                if message["type"] == "IPC_MESSAGE":
                    assert len(message["payload"]) == len(BIG)
                    break
        growth = peak_rss_mib(appd.process.pid) - before
        reader.send(json.dumps({"type": "IPC_FORWARD", "session_id": sid, "payload": "echo:still here"}))
        while (message := json.loads(reader.recv(timeout=10))).get("payload") != "still here":
            pass
    # unbounded, the queue alone would hold ~100 MiB and the IPC_RECV mailbox another 64 MiB
    assert growth < MAX_GROWTH_MIB, f"appd's peak RSS grew by {growth:.0f} MiB"
    assert disconnected(slow), "the client that does not read was never disconnected"
    slow.close()
    log = appd.log.read_text()
    assert "closing a WebSocket client (control) that does not read its messages" in log, log[-2000:]
    assert "Traceback" not in log


def test_a_unix_client_that_does_not_read_its_replies_is_dropped(installed, appd_factory):
    appd = appd_factory()
    sid = appd.launch("org.weft.test.probe")
    for _ in range(6):  # fill the mailbox: each IPC_RECV reply is ~256 KiB
        while (sent := appd.request(protocol.IpcForward(session_id=sid, payload="echo:" + BIG))).type != "APP_STATE":
            assert isinstance(sent, protocol.Error) and sent.code == protocol.ErrorCode.BUSY, sent
            time.sleep(0.1)  # the runtime is still reading the previous ones
    with socket.socket(socket.AF_UNIX) as greedy:
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.connect(str(appd.socket))
        request = protocol.encode_frame(protocol.IpcRecv(session_id=sid, timeout_ms=10_000))
        greedy.sendall(request * 6)  # pipelined, and never read
        assert wait_for(lambda: "closing a Unix client: it has not read a reply" in appd.log.read_text(),
                        timeout=30, what="the slow Unix client to be dropped")
        assert disconnected(greedy)
    assert appd.request(protocol.QueryRunning()).type == "RUNNING_APPS"  # everyone else is served
