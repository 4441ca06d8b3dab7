"""appd ⇄ weft-compositor: a real appd with real runtimes, and a fake compositor that is a real
Unix socket server speaking the reference framing (4-byte LE length + msgpack map)."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from platform_support import Appd, Env, wait_for
from websockets.sync.client import connect
from websockets.typing import Origin

from weft.daemons import protocol
from weft.daemons.appd.compositor_link import MAX_QUEUED, CompositorLink
from weft.daemons.protocol import ErrorCode, SessionState

COUNTER = "org.weft.demo.counter"
NOTES = "org.weft.demo.notes"


class FakeCompositor:
    """Listens where appd looks for the compositor; records every frame appd sends."""

    def __init__(self, path: Path):
        self.path = path
        path.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        try:
            while len(header := conn.recv(4, socket.MSG_WAITALL)) == 4:
                body = conn.recv(int.from_bytes(header, "little"), socket.MSG_WAITALL)
                self.received.put(msgpack.unpackb(body))
        except OSError:
            pass

    def expect(self, kind: str, timeout: float = 20.0, **fields: Any) -> dict[str, Any]:
        """The next message of type `kind` with these field values (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.received.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {kind} {fields} from appd within {timeout} s") from None
            if message["type"] == kind and all(message.get(k) == v for k, v in fields.items()):
                return message

    def send_raw(self, data: bytes) -> None:
        self.connections[-1].sendall(data)

    def send(self, message: dict[str, Any]) -> None:
        body = msgpack.packb(message)
        self.send_raw(len(body).to_bytes(4, "little") + body)

    def close(self) -> None:
        self.listener.close()
        for conn in self.connections:
            conn.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def installed(env: Env, built_apps: dict[str, Path]) -> Env:
    for app_id in (COUNTER, NOTES):
        env.install(built_apps[app_id])
    return env


@pytest.fixture
def compositor_path(env: Env) -> Path:
    return env.root / "compositor.sock"


@pytest.fixture
def compositor(compositor_path: Path) -> Any:
    fake = FakeCompositor(compositor_path)
    yield fake
    fake.close()


def runtime_pid(appd: Appd, session_id: int) -> int:
    match = re.search(rf"session {session_id}: \S+ in runtime (\d+)", appd.log.read_text())
    assert match, appd.log.read_text()
    return int(match.group(1))


def test_ready_session_is_announced_with_its_runtime_pid_and_a_working_token(installed, appd_factory, compositor):
    appd = appd_factory(WEFT_COMPOSITOR_SOCKET=str(compositor.path))
    session_id = appd.launch(COUNTER)
    created = compositor.expect("app_surface_created", session_id=session_id)
    assert created["app_id"] == COUNTER
    assert created["pid"] == runtime_pid(appd, session_id)
    token = appd.request(protocol.QuerySessionToken(session_id=session_id))
    assert isinstance(token, protocol.SessionToken) and created["token"] == token.token
    # what the app shell does with it: a WebSocket bound to this session, from the app's origin
    with connect(appd.ws_url(created["token"]), origin=Origin(f"weft-app://{COUNTER}")) as page:
        page.send(json.dumps({"type": "QUERY_APP_STATE", "session_id": session_id}))
        assert json.loads(page.recv(timeout=10)) == {"type": "APP_STATE", "session_id": session_id,
                                                     "state": "running"}
        page.send(json.dumps({"type": "QUERY_APP_STATE", "session_id": session_id + 1}))
        assert json.loads(page.recv(timeout=10))["code"] == ErrorCode.NOT_PERMITTED


def test_terminate_withdraws_the_window(installed, appd_factory, compositor):
    appd = appd_factory(WEFT_COMPOSITOR_SOCKET=str(compositor.path))
    session_id = appd.launch(COUNTER)
    compositor.expect("app_surface_created", session_id=session_id)
    appd.request(protocol.TerminateApp(session_id=session_id))
    compositor.expect("app_surface_destroyed", session_id=session_id)
    appd.wait_state(session_id, SessionState.STOPPED)


def test_window_closed_by_the_user_ends_the_session(installed, appd_factory, compositor):
    appd = appd_factory(WEFT_COMPOSITOR_SOCKET=str(compositor.path))
    closing, staying = appd.launch(COUNTER), appd.launch(NOTES)
    compositor.expect("app_surface_created", session_id=staying)
    compositor.send({"type": "window_closed", "session_id": closing})
    compositor.expect("app_surface_destroyed", session_id=closing)
    appd.wait_state(closing, SessionState.STOPPED)
    assert f"session {closing}: window closed" in appd.log.read_text()
    reply = appd.request(protocol.QueryAppState(session_id=closing))
    assert isinstance(reply, protocol.AppState) and reply.error is None  # closed on request, not failed
    assert appd.state(staying) == SessionState.RUNNING


def test_focus_app_asks_the_compositor_to_raise_the_window(installed, appd_factory, compositor):
    appd = appd_factory(WEFT_COMPOSITOR_SOCKET=str(compositor.path))
    session_id = appd.launch(COUNTER)
    compositor.expect("app_surface_created", session_id=session_id)
    reply = appd.request(protocol.FocusApp(session_id=session_id))
    assert reply == protocol.AppState(session_id=session_id, state=SessionState.RUNNING)
    compositor.expect("app_focus_request", session_id=session_id)
    with connect(appd.ws_url()) as shell:  # the system shell's taskbar, over JSON
        shell.send(json.dumps({"type": "FOCUS_APP", "session_id": session_id}))
        assert json.loads(shell.recv(timeout=10))["state"] == "running"
    compositor.expect("app_focus_request", session_id=session_id)
    token = appd.request(protocol.QuerySessionToken(session_id=session_id))
    assert isinstance(token, protocol.SessionToken)
    with connect(appd.ws_url(token.token)) as page:  # an app may not raise itself
        page.send(json.dumps({"type": "FOCUS_APP", "session_id": session_id}))
        assert json.loads(page.recv(timeout=10))["code"] == ErrorCode.NOT_PERMITTED
    missing = appd.request(protocol.FocusApp(session_id=999))
    assert isinstance(missing, protocol.Error) and missing.code == ErrorCode.SESSION_NOT_FOUND
    appd.request(protocol.TerminateApp(session_id=session_id))
    appd.wait_state(session_id, SessionState.STOPPED)
    stopped = appd.request(protocol.FocusApp(session_id=session_id))
    assert isinstance(stopped, protocol.Error) and stopped.code == ErrorCode.NOT_RUNNING


def test_without_a_compositor_launches_never_wait_and_windows_come_when_it_appears(installed, appd_factory,
                                                                                  compositor_path):
    # The reference queued 32 messages for an absent compositor, then blocked every launch.
    appd = appd_factory(WEFT_COMPOSITOR_SOCKET=str(compositor_path))
    keeper = appd.launch(NOTES)
    started = time.monotonic()
    with appd.client() as client:
        for _ in range(100):  # FOCUS_APP: one message each, answered at once
            reply = client.request(protocol.FocusApp(session_id=keeper))
            assert isinstance(reply, protocol.AppState), reply
        for _ in range(50):  # 100 more messages: app_surface_created and _destroyed of each session
            ack = client.request(protocol.LaunchApp(app_id=COUNTER))
            assert isinstance(ack, protocol.LaunchAck), ack
            appd.wait_state(ack.session_id, SessionState.RUNNING, timeout=30)
            client.request(protocol.TerminateApp(session_id=ack.session_id))
    assert appd.state(keeper) == SessionState.RUNNING
    log = appd.log.read_text()
    assert "cannot connect to weft-compositor" in log and "not sent" in log
    assert log.count("not sent") == 1, "dropped messages are logged once per absence"
    print(f"50 launches without a compositor: {time.monotonic() - started:.1f} s")
    fake = FakeCompositor(compositor_path)  # the compositor starts late: the running session gets its window
    try:
        created = fake.expect("app_surface_created", timeout=15)
        assert created["session_id"] == keeper and created["app_id"] == NOTES
        time.sleep(0.5)
        assert fake.received.empty(), "only the running session is announced"
    finally:
        fake.close()


def test_a_restarted_compositor_gets_every_window_back(installed, appd_factory, compositor_path):
    first = FakeCompositor(compositor_path)
    appd = appd_factory(WEFT_COMPOSITOR_SOCKET=str(compositor_path))
    one, two, gone = appd.launch(COUNTER), appd.launch(NOTES), appd.launch(COUNTER)
    for session_id in (one, two, gone):
        first.expect("app_surface_created", session_id=session_id)
    first.close()  # the compositor crashes
    appd.request(protocol.TerminateApp(session_id=gone))  # a session ends while it is away
    appd.wait_state(gone, SessionState.STOPPED)
    second = FakeCompositor(compositor_path)
    try:
        announced = [second.expect("app_surface_created", timeout=15) for _ in range(2)]
        assert [(m["session_id"], m["app_id"]) for m in announced] == [(one, COUNTER), (two, NOTES)]
        assert announced[0]["pid"] == runtime_pid(appd, one)
        time.sleep(0.5)
        assert second.received.empty()
        second.send({"type": "window_closed", "session_id": two})  # the new connection works both ways
        appd.wait_state(two, SessionState.STOPPED)
    finally:
        second.close()


GARBAGE = [
    b"\x03\x00\x00\x00\xc1\xc1\xc1",  # not msgpack
    b"\x01\x00\x00\x00\x07",  # a number, not a map
    len(msgpack.packb({"type": "window_closed", "session_id": "x"})).to_bytes(4, "little")
    + msgpack.packb({"type": "window_closed", "session_id": "x"}),  # a known type with a bad field
    (5 << 20).to_bytes(4, "little") + b"\x00" * 64,  # longer than 4 MiB
]


def test_garbage_from_the_compositor_drops_the_connection_not_appd(installed, appd_factory, compositor):
    appd = appd_factory(WEFT_COMPOSITOR_SOCKET=str(compositor.path))
    session_id = appd.launch(COUNTER)
    compositor.expect("app_surface_created", session_id=session_id)
    # Skipped, connection kept: an unknown type (a newer compositor), events for sessions without a window.
    compositor.send({"type": "client_disconnected", "pid": 4})
    compositor.send({"type": "window_closed", "session_id": 999})
    compositor.send({"type": "surface_ready", "session_id": session_id})
    wait_for(lambda: f"session {session_id}: window mapped" in appd.log.read_text(), what="surface_ready logged")
    assert len(compositor.connections) == 1
    for number, garbage in enumerate(GARBAGE, start=2):
        compositor.send_raw(garbage)
        # appd drops the connection, reconnects and announces the window again
        compositor.expect("app_surface_created", session_id=session_id)
        assert len(compositor.connections) == number
    log = appd.log.read_text()
    assert log.count("bad frame from weft-compositor") == len(GARBAGE), log
    assert "Traceback" not in log
    assert appd.state(session_id) == SessionState.RUNNING
    assert appd.roundtrip(session_id, "get") == '{"count":0}'
    compositor.send({"type": "window_closed", "session_id": session_id})
    appd.wait_state(session_id, SessionState.STOPPED)


def test_no_compositor_setting_means_no_desktop(installed, appd_factory):
    appd = appd_factory()
    session_id = appd.launch(COUNTER)
    assert "no desktop (WEFT_COMPOSITOR_SOCKET is unset)" in appd.log.read_text()
    reply = appd.request(protocol.FocusApp(session_id=session_id))  # valid, with no window to raise
    assert isinstance(reply, protocol.AppState) and reply.state == SessionState.RUNNING


# ---- the link alone, in-process -------------------------------------------------------------------

def _announcement(session_id: int) -> protocol.AppSurfaceCreated:
    return protocol.AppSurfaceCreated(app_id=COUNTER, session_id=session_id, pid=100 + session_id, token="t" * 43)


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_compositor_that_stops_reading_loses_its_connection_not_appds_memory(tmp_path, caplog):
    connections: list[asyncio.StreamWriter] = []

    async def stuck(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # never reads

    async def scenario() -> None:
        server = await asyncio.start_unix_server(stuck, str(tmp_path / "c.sock"))
        link = CompositorLink(tmp_path / "c.sock")
        link.surface_created(_announcement(1))  # before any connection: dropped, announced on connect
        link.start(on_window_closed=lambda session_id: None)
        await _until(lambda: link.connected)
        for _ in range(MAX_QUEUED + 2):  # faster than any socket drains: the queue is full at once
            link.focus(1)
        assert not link.connected and len(link._queue) == 0  # freed at once
        await _until(lambda: len(connections) == 2 and link.connected)  # back, with the window announced
        await link.close()
        server.close()

    with caplog.at_level(logging.INFO, logger="weft.appd"):
        asyncio.run(scenario())
    assert "not sent" in caplog.text
    assert f"it has not read {MAX_QUEUED + 1} messages; reconnecting" in caplog.text  # 256 + the announcement
    assert caplog.text.count("announcing 1 windows") == 2


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to bind a socket as another user")
def test_tokens_go_only_to_a_compositor_of_appds_own_user(tmp_path, caplog):
    # Someone else's socket at the configured path must not receive session tokens.
    directory = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's tmp_path is closed to other users
    directory.chmod(0o777)
    path = directory / "c.sock"
    listener = subprocess.Popen(
        ["/usr/bin/python3", "-c", "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\n"
         "s.listen(4)\nprint('ready',flush=True)\nwhile True:\n c,_=s.accept()\n d=c.recv(65536)\n"
         " print(len(d),flush=True)\n", str(path)], user=65534, stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout is not None and listener.stdout.readline() == "ready\n"

        async def scenario() -> None:
            link = CompositorLink(path)
            link.start(on_window_closed=lambda session_id: None)
            link.surface_created(_announcement(1))
            await _until(lambda: "uid 65534" in caplog.text)
            assert not link.connected
            await link.close()

        with caplog.at_level(logging.INFO, logger="weft.appd"):
            asyncio.run(scenario())
        assert "belongs to a process of uid 65534, not 0; not using it" in caplog.text
        listener.terminate()
        assert set(listener.communicate(timeout=10)[0].split()) <= {"0"}  # connections closed, nothing sent
    finally:
        listener.kill()
        shutil.rmtree(directory)
