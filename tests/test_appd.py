"""weft-appd as a real process: real runtimes, real components, both transports."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import msgpack
import pytest
from platform_support import Appd, Env, wait_for
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from weft.daemons import protocol
from weft.daemons.protocol import ErrorCode, SessionState


@pytest.fixture
def installed(env: Env, built_apps: dict[str, Path]) -> Env:
    for package in built_apps.values():
        env.install(package)
    return env


def runtime_pid(appd: Appd, session_id: int) -> int:
    match = re.search(rf"session {session_id}: \S+ in runtime (\d+)", appd.log.read_text())
    assert match, appd.log.read_text()
    return int(match.group(1))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except OSError:
        return False
    return state != "Z"


def raw_request(sock: socket.socket, body: bytes) -> Any:
    sock.sendall(len(body).to_bytes(4, "little") + body)
    length = int.from_bytes(sock.recv(4, socket.MSG_WAITALL), "little")
    return msgpack.unpackb(sock.recv(length, socket.MSG_WAITALL))


def ws_receive_until(ws: ClientConnection, predicate: Callable[[dict[str, Any]], bool],
                     timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        message = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if predicate(message):
            return message


def test_launch_ipc_roundtrip_and_stop(installed, appd_factory):
    appd = appd_factory()
    sid = appd.launch("org.weft.demo.counter")
    assert appd.roundtrip(sid, "increment") == '{"count":1}'
    probe = appd.launch("org.weft.test.probe")
    assert appd.roundtrip(probe, "echo:line one\nline two\n") == "line one\nline two\n"
    running = appd.request(protocol.QueryRunning())
    assert {(s.session_id, s.app_id) for s in running.sessions} == {
        (sid, "org.weft.demo.counter"), (probe, "org.weft.test.probe")}
    pid = runtime_pid(appd, sid)
    assert appd.request(protocol.TerminateApp(session_id=sid)) == protocol.AppState(
        session_id=sid, state=SessionState.STOPPING)
    appd.wait_state(sid, SessionState.STOPPED)
    assert not alive(pid)
    reply = appd.request(protocol.IpcForward(session_id=sid, payload="get"))
    assert isinstance(reply, protocol.Error) and reply.code == ErrorCode.NOT_RUNNING


def test_capability_denials_reach_the_ui_through_appd(installed, appd_factory):
    appd = appd_factory()
    sid = appd.launch("org.weft.test.probe")  # installed without any capability
    assert appd.roundtrip(sid, "fetch:http://127.0.0.1:9/") == "err: capability 'net:fetch:127.0.0.1' not granted"
    assert appd.roundtrip(sid, "files-write:/data/x:y").startswith("err: access denied")
    assert appd.roundtrip(sid, "write:/data/x:y").startswith("oserror")  # no preopen at all
    assert appd.state(sid) == SessionState.RUNNING


def test_live_sessions_are_capped(installed, appd_factory):
    appd = appd_factory(WEFT_MAX_SESSIONS="2")
    first = appd.launch("org.weft.demo.counter")
    appd.launch("org.weft.demo.counter")
    reply = appd.request(protocol.LaunchApp(app_id="org.weft.demo.counter"))
    assert reply == protocol.Error(code=ErrorCode.BUSY, message="2 sessions are already running")
    appd.request(protocol.TerminateApp(session_id=first))
    appd.wait_state(first, SessionState.STOPPED)
    appd.launch("org.weft.demo.counter")


def test_unknown_sessions_and_installed_apps(installed, built_apps, appd_factory):
    appd = appd_factory()
    assert appd.request(protocol.QueryAppState(session_id=999)) == protocol.AppState(
        session_id=999, state=SessionState.NOT_FOUND)
    assert appd.request(protocol.TerminateApp(session_id=999)) == protocol.Error(
        code=ErrorCode.SESSION_NOT_FOUND, message="session 999 not found")
    apps = [(a.app_id, a.name, a.version) for a in appd.request(protocol.QueryInstalledApps()).apps]
    assert [app_id for app_id, _, _ in apps] == sorted(built_apps)  # every installed app, sorted by id
    for expected in (("org.weft.demo.counter", "Counter", "0.1.0"), ("org.weft.demo.notes", "Notes", "0.1.0"),
                     ("org.weft.test.probe", "Probe", "0.1.0"), ("org.weft.test.silent", "Silent", "0.1.0")):
        assert expected in apps


def test_launch_refuses_invalid_and_missing_apps(installed, appd_factory):
    appd = appd_factory()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(appd.socket))
        reply = raw_request(sock, msgpack.packb({"type": "LAUNCH_APP", "app_id": "../../../tmp/evil", "surface_id": 0}))
        assert reply["type"] == "ERROR" and reply["code"] == ErrorCode.BAD_REQUEST
    reply = appd.request(protocol.LaunchApp(app_id="org.weft.not.installed"))
    assert isinstance(reply, protocol.Error) and reply.code == ErrorCode.LAUNCH_FAILED
    assert appd.request(protocol.QueryRunning()).sessions == []


def test_unix_socket_takes_arrays_and_survives_malformed_and_oversized_frames(installed, appd_factory):
    appd = appd_factory()
    with socket.socket(socket.AF_UNIX) as bad, socket.socket(socket.AF_UNIX) as good:
        bad.connect(str(appd.socket))
        good.connect(str(appd.socket))
        assert raw_request(bad, b"\x91\xadQUERY_RUNNING") == {"type": "RUNNING_APPS", "sessions": []}
        reply = raw_request(bad, b"\xc1\xc1\xc1")
        assert reply["type"] == "ERROR" and "malformed msgpack" in reply["message"]
        reply = raw_request(bad, msgpack.packb({"type": "BOGUS"}))
        assert reply["type"] == "ERROR" and reply["code"] == ErrorCode.BAD_REQUEST
        assert raw_request(bad, b"\x91\xadQUERY_RUNNING")["type"] == "RUNNING_APPS"  # still in step
        bad.sendall((protocol.MAX_FRAME_BYTES + 1).to_bytes(4, "little"))
        length = int.from_bytes(bad.recv(4, socket.MSG_WAITALL), "little")
        assert msgpack.unpackb(bad.recv(length, socket.MSG_WAITALL))["message"].startswith("frame of")
        assert bad.recv(1) == b""  # closed: the stream cannot be resynchronised
        assert raw_request(good, msgpack.packb(["QUERY_INSTALLED_APPS"]))["type"] == "INSTALLED_APPS"


def test_requests_with_unhashable_types_or_keys_get_an_error_reply(installed, appd_factory):
    appd = appd_factory()
    array_key = b"\x82" + msgpack.packb(["type"]) + msgpack.packb("x") + msgpack.packb("type") + b"\xadQUERY_RUNNING"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(appd.socket))
        for body in (msgpack.packb({"type": ["LAUNCH_APP"], "app_id": "org.weft.demo.counter"}), array_key):
            reply = raw_request(sock, body)
            assert reply["type"] == "ERROR" and reply["code"] == ErrorCode.BAD_REQUEST, reply
        assert raw_request(sock, b"\x91\xadQUERY_RUNNING")["type"] == "RUNNING_APPS"  # still in step
    with connect(appd.ws_url()) as ws:
        for text in ('{"type": ["QUERY_RUNNING"]}', '{"type": {"a": 1}}', "[" * 50_000 + "]" * 50_000):
            ws.send(text)
            reply = json.loads(ws.recv(timeout=5))
            assert reply["type"] == "ERROR" and reply["code"] == ErrorCode.BAD_REQUEST, reply
    assert "Traceback" not in appd.log.read_text()


def test_peers_with_another_uid_are_refused(installed, appd_factory):
    appd = appd_factory()
    os.chmod(appd.socket.parent, 0o755)
    os.chmod(appd.socket, 0o666)  # only SO_PEERCRED stands in the way now
    # The tmp ancestors are 0700, so the client reaches the socket through an inherited
    # directory fd; it runs the system Python because the venv's lives under /root.
    directory = os.open(appd.socket.parent, os.O_PATH)
    client = ("import socket, sys\n"
              "s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])\n"
              "try:\n"
              "    s.sendall(bytes.fromhex('0f000000') + b'\\x91\\xadQUERY_RUNNING')\n"
              "    sys.exit(0 if s.recv(4) == b'' else 3)\n"
              "except (BrokenPipeError, ConnectionResetError):  # closed before or after our request\n"
              "    sys.exit(0)\n")
    try:
        result = subprocess.run(["/usr/bin/python3", "-c", client, f"/proc/self/fd/{directory}/{appd.socket.name}"],
                                user=65534, pass_fds=[directory], capture_output=True, text=True, timeout=20)
    finally:
        os.close(directory)
    assert result.returncode == 0, result.stderr
    assert "refusing a Unix client with uid 65534" in appd.log.read_text()


def test_websocket_needs_the_token_and_an_allowed_origin(installed, appd_factory):
    appd = appd_factory()
    for url, origin, status in ((appd.ws_url(""), None, 401), (appd.ws_url("wrong"), None, 401),
                                (appd.ws_url(), "http://evil.example", 403)):
        with pytest.raises(InvalidStatus) as excinfo:
            connect(url, origin=Origin(origin) if origin else None).close()
        assert excinfo.value.response.status_code == status
    with connect(appd.ws_url(), origin=Origin("weft-system://shell")) as ws:
        ws.send(json.dumps({"type": "QUERY_RUNNING"}))
        assert json.loads(ws.recv(timeout=5)) == {"type": "RUNNING_APPS", "sessions": []}
        ws.send("not json")
        assert json.loads(ws.recv(timeout=5))["type"] == "ERROR"


def test_oversized_websocket_message_closes_only_that_connection(installed, appd_factory):
    appd = appd_factory()
    with connect(appd.ws_url()) as greedy, connect(appd.ws_url()) as polite:
        greedy.send(json.dumps({"type": "QUERY_RUNNING", "pad": "x" * (protocol.MAX_FRAME_BYTES + 1)}))
        with pytest.raises(ConnectionClosed) as excinfo:
            greedy.recv(timeout=5)
        assert excinfo.value.rcvd is not None and excinfo.value.rcvd.code == 1009  # message too big
        polite.send(json.dumps({"type": "QUERY_RUNNING"}))
        assert json.loads(polite.recv(timeout=5))["type"] == "RUNNING_APPS"


def test_session_bound_websocket_sees_only_its_own_session(installed, appd_factory):
    appd = appd_factory()
    mine = appd.launch("org.weft.demo.counter")
    other = appd.launch("org.weft.demo.counter")
    token = appd.request(protocol.QuerySessionToken(session_id=mine)).token
    with pytest.raises(InvalidStatus):
        connect(appd.ws_url(token), origin=Origin("weft-app://org.weft.demo.notes")).close()
    with connect(appd.ws_url(), origin=None) as control, \
            connect(appd.ws_url(token), origin=Origin("weft-app://org.weft.demo.counter")) as page:
        assert appd.roundtrip(other, "increment") == '{"count":1}'  # traffic the page must not see
        page.send(json.dumps({"type": "IPC_FORWARD", "session_id": mine, "payload": "decrement"}))
        assert json.loads(page.recv(timeout=5)) == {"type": "APP_STATE", "session_id": mine, "state": "running"}
        assert json.loads(page.recv(timeout=5)) == {"type": "IPC_MESSAGE", "session_id": mine,
                                                    "payload": '{"count":-1}'}
        for forbidden in ({"type": "IPC_FORWARD", "session_id": other, "payload": "reset"},
                          {"type": "LAUNCH_APP", "app_id": "org.weft.demo.notes"},
                          {"type": "TERMINATE_APP", "session_id": other},
                          {"type": "QUERY_SESSION_TOKEN", "session_id": mine}):
            page.send(json.dumps(forbidden))
            reply = json.loads(page.recv(timeout=5))
            assert reply["type"] == "ERROR" and reply["code"] == ErrorCode.NOT_PERMITTED, forbidden
        # the control connection saw both sessions' IPC; the page never saw session `other`
        seen = ws_receive_until(control, lambda m: m["type"] == "IPC_MESSAGE" and m["session_id"] == mine)
        assert seen["payload"] == '{"count":-1}'
    assert appd.roundtrip(other, "get") == '{"count":1}'


def test_websocket_control_client_sees_lifecycle_broadcasts(installed, appd_factory):
    appd = appd_factory()
    with connect(appd.ws_url()) as ws:
        ws.send(json.dumps({"type": "LAUNCH_APP", "app_id": "org.weft.demo.counter", "surface_id": 0}))
        ack = ws_receive_until(ws, lambda m: m["type"] == "LAUNCH_ACK")
        sid = ack["session_id"]
        ws_receive_until(ws, lambda m: m["type"] == "APP_READY" and m["session_id"] == sid)
        ws.send(json.dumps({"type": "TERMINATE_APP", "session_id": sid}))
        ws_receive_until(ws, lambda m: m == {"type": "APP_STATE", "session_id": sid, "state": "stopped"})
        gesture = {"gesture_type": 0, "fingers": 3, "dx": 150.0, "dy": -4.5}
        with connect(appd.ws_url()) as shell:
            ws.send(json.dumps({"type": "PANEL_GESTURE", **gesture, "dx": 150}))
            expected = {"type": "NAVIGATION_GESTURE", **gesture}
            assert ws_receive_until(ws, lambda m: m["type"] == "NAVIGATION_GESTURE") == expected
            assert ws_receive_until(shell, lambda m: m["type"] == "NAVIGATION_GESTURE") == expected


def test_runaway_guest_is_stopped(installed, appd_factory):
    appd = appd_factory()
    sid = appd.launch("org.weft.test.probe")
    pid = runtime_pid(appd, sid)
    with appd.client() as client:
        client.request(protocol.IpcForward(session_id=sid, payload="spin"))
    time.sleep(0.3)
    started = time.monotonic()
    appd.request(protocol.TerminateApp(session_id=sid))
    appd.wait_state(sid, SessionState.STOPPED, timeout=10)
    assert time.monotonic() - started < 5
    assert not alive(pid)
    assert f"runtime {pid} exited with 3" in appd.log.read_text()  # interrupted, not SIGKILLed


def test_runtime_crash_is_cleaned_up(installed, appd_factory):
    appd = appd_factory()
    sid = appd.launch("org.weft.demo.counter")
    os.kill(runtime_pid(appd, sid), signal.SIGKILL)
    appd.wait_state(sid, SessionState.STOPPED)
    for _ in range(3):  # the reference deadlocked here once the relay had ended
        reply = appd.request(protocol.IpcForward(session_id=sid, payload="get"))
        assert isinstance(reply, protocol.Error) and reply.code == ErrorCode.NOT_RUNNING
    assert appd.roundtrip(appd.launch("org.weft.demo.counter"), "get") == '{"count":0}'


def test_launch_and_stop_cycles_leak_no_descriptors_or_processes(installed, appd_factory):
    appd = appd_factory()

    def cycle() -> None:
        sid = appd.launch("org.weft.demo.counter")
        appd.roundtrip(sid, "get")
        appd.request(protocol.TerminateApp(session_id=sid))
        appd.wait_state(sid, SessionState.STOPPED)

    def settled() -> tuple[int, int]:
        time.sleep(1.0)  # let the pool finish starting its replacement runtime
        return len(os.listdir(f"/proc/{appd.process.pid}/fd")), len(appd.env.processes())

    cycle()
    before = settled()
    for _ in range(10):
        cycle()
    assert settled() == before


def test_ready_timeout_stops_the_session(installed, appd_factory):
    appd = appd_factory(WEFT_READY_TIMEOUT_S="1")
    reply = appd.request(protocol.LaunchApp(app_id="org.weft.test.silent"))
    pid = cast(re.Match[str], wait_for(
        lambda: re.search(rf"session {reply.session_id}: \S+ in runtime (\d+)", appd.log.read_text())))
    appd.wait_state(reply.session_id, SessionState.STOPPED, timeout=10)
    assert "no READY within 1 s" in appd.log.read_text()
    assert not alive(int(pid.group(1)))


def test_twenty_concurrent_sessions(installed, appd_factory):
    appd = appd_factory()
    with ThreadPoolExecutor(max_workers=20) as pool:
        sids = list(pool.map(lambda _: appd.launch("org.weft.demo.counter", timeout=60), range(20)))
        assert len(set(sids)) == 20
        replies = list(pool.map(lambda sid: appd.roundtrip(sid, "increment"), sids))
    assert replies == ['{"count":1}'] * 20
    assert len(appd.request(protocol.QueryRunning()).sessions) == 20
    pids = [runtime_pid(appd, sid) for sid in sids]
    assert appd.stop() == 0
    wait_for(lambda: not any(alive(pid) for pid in pids), what="runtimes to exit")
    assert appd.env.processes() == []
    assert not appd.socket.exists()


def test_restart_with_sessions_running_restores_them(installed, appd_factory):
    appd = appd_factory()
    counter = appd.launch("org.weft.demo.counter")
    appd.launch("org.weft.demo.notes")
    appd.roundtrip(counter, "increment")
    assert appd.stop() == 0
    assert appd.env.processes() == []
    assert json.loads((appd.env.runtime_dir / "weft/last-session.json").read_text()) == [
        "org.weft.demo.counter", "org.weft.demo.notes"]

    again = appd_factory()
    sessions = cast(list[protocol.SessionInfo], wait_for(
        lambda: len(s := again.request(protocol.QueryRunning()).sessions) == 2 and s,
        timeout=30, what="restored sessions"))
    assert sorted(s.app_id for s in sessions) == ["org.weft.demo.counter", "org.weft.demo.notes"]
    restored = next(s.session_id for s in sessions if s.app_id == "org.weft.demo.counter")
    again.wait_state(restored, SessionState.RUNNING, timeout=30)
    assert again.roundtrip(restored, "get") == '{"count":0}'  # a fresh instance
    assert not (appd.env.runtime_dir / "weft/last-session.json").exists()


def test_killed_appd_leaves_no_runtimes_behind(installed, appd_factory):
    appd = appd_factory()
    pid = runtime_pid(appd, appd.launch("org.weft.demo.counter"))
    appd.stop(signal.SIGKILL)
    wait_for(lambda: appd.env.processes() == [], timeout=15, what="orphaned runtimes to exit")
    assert not alive(pid)
    again = appd_factory()  # the stale socket file is replaced
    assert again.roundtrip(again.launch("org.weft.demo.counter"), "get") == '{"count":0}'


def test_sd_notify_ready_and_stopping(installed, appd_factory, tmp_path):
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(10)
        appd = appd_factory(NOTIFY_SOCKET=str(notify_path))
        assert notify.recv(64) == b"READY=1"
        appd.stop()
        assert notify.recv(64) == b"STOPPING=1"


def test_boot_token_file_is_private_and_reused(installed, appd_factory):
    appd = appd_factory()
    token_path = appd.env.runtime_dir / "weft/appd.token"
    assert oct(token_path.stat().st_mode & 0o777) == "0o600"
    appd.stop()
    assert appd_factory().token == appd.token
