"""weft-compositor on the headless backend with real client processes (docs/desktop.md).

The shell and app shells are tests/compositor_support.py run as scripts; screenshots are taken
with grim through wlr-screencopy (PNG kept in test-artifacts/compositor/) and the layout is
checked on their pixels. Input goes through the virtual pointer/keyboard protocols, which the
compositor offers only with --test-input. The IPC socket is driven as appd would.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from compositor_support import Client, close_all, virtual_keyboard, virtual_pointer

from weft.daemons.protocol import (
    AppFocusRequest,
    AppSurfaceCreated,
    AppSurfaceDestroyed,
    Message,
    decode_body,
    encode_frame,
    recv_frame,
)

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = Path(__file__).parent / "compositor_support.py"
ARTIFACTS = ROOT / "test-artifacts" / "compositor"
WIDTH, HEIGHT = 1280, 800
BLUE, RED, GREEN, YELLOW, BLACK = (0, 0, 255), (255, 0, 0), (0, 255, 0), (255, 255, 0), (0, 0, 0)
WORK_AREA_POINT = (640, 400)
TASKBAR_POINT = (640, HEIGHT - 10)
BTN_LEFT = 272
KEY_TAB, KEY_F4, KEY_LEFTALT = 15, 62, 56
ALT_MASK = 8  # Mod1 in the default keymap

pytestmark = pytest.mark.skipif(shutil.which("grim") is None, reason="grim is not installed")


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "the condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class Desktop:
    process: subprocess.Popen[str]
    display: str
    runtime: Path
    ipc_path: Path
    shell_log: Path
    app_log: Path
    stderr: Path

    @property
    def wayland_socket(self) -> str:
        return str(self.runtime / self.display)

    def env(self) -> dict[str, str]:
        return {**os.environ, "XDG_RUNTIME_DIR": str(self.runtime), "WAYLAND_DISPLAY": self.display}

    def pixels(self, name: str) -> Callable[[int, int], tuple[int, int, int]]:
        """A screenshot (PNG kept as an artifact) and a reader of its pixels."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        subprocess.run(["grim", str(ARTIFACTS / f"{name}.png")], env=self.env(), check=True, timeout=10)
        ppm = subprocess.run(["grim", "-t", "ppm", "-"], env=self.env(), check=True, timeout=10,
                             capture_output=True).stdout
        _magic, rest = ppm.split(b"\n", 1)
        size, rest = rest.split(b"\n", 1)
        _maxval, data = rest.split(b"\n", 1)
        width = int(size.split()[0])

        def at(x: int, y: int) -> tuple[int, int, int]:
            offset = (y * width + x) * 3
            return data[offset], data[offset + 1], data[offset + 2]

        return at

    def wait_for_colour(self, point: tuple[int, int], colour: tuple[int, int, int], name: str) -> None:
        last: list[tuple[int, int, int]] = []

        def check() -> bool:
            last[:] = [self.pixels(name)(*point)]
            return last[0] == colour

        try:
            wait_until(check, 10, f"{colour} at {point}")
        except AssertionError:
            raise AssertionError(f"{name}: pixel {point} is {last}, expected {colour}; "
                                 f"compositor log:\n{self.stderr.read_text()}") from None

    def connect_ipc(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(str(self.ipc_path))
        return sock

    def events(self, log: Path, kind: str) -> list[dict[str, Any]]:
        return [e for e in read_log(log) if e["event"] == kind]


def send(sock: socket.socket, message: Message) -> None:
    sock.sendall(encode_frame(message))


def receive(sock: socket.socket) -> dict[str, Any]:
    body = decode_body(recv_frame(sock, "the compositor closed the connection"))
    assert isinstance(body, dict)
    return body


def start_desktop(tmp_path: Path, *extra: str, app_args: str = "", shell_args: str = "") -> Desktop:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    shell_log, app_log, stderr = tmp_path / "shell.jsonl", tmp_path / "app.jsonl", tmp_path / "compositor.log"
    python = sys.executable
    command = [python, "-m", "weft.daemons.compositor", "--backend", "headless", "--size", f"{WIDTH}x{HEIGHT}",
               "--test-input", "--debug",
               "--app-shell", f"{python} {SUPPORT} --log {app_log} --colour session --zweft application "
                              f"--read-token {app_args}", *extra]
    command += ["--shell", f"{python} {SUPPORT} --log {shell_log} --colour 0000ff --zweft panel {shell_args}"]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "PYTHONPATH": str(ROOT)}
    for name in ("WAYLAND_DISPLAY", "DISPLAY", "NOTIFY_SOCKET"):
        env.pop(name, None)
    with stderr.open("w") as err:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("WAYLAND_DISPLAY="), stderr.read_text()
    return Desktop(process, line.strip().split("=", 1)[1], runtime, runtime / "weft" / "compositor.sock",
                   shell_log, app_log, stderr)


@pytest.fixture(autouse=True)
def _disconnect_clients() -> Iterator[None]:
    yield
    close_all()


@pytest.fixture
def desktop(tmp_path: Path) -> Iterator[Desktop]:
    running = start_desktop(tmp_path)
    yield running
    stop(running)


def stop(running: Desktop) -> None:
    running.process.send_signal(signal.SIGTERM)
    try:
        running.process.wait(10)
    except subprocess.TimeoutExpired:
        running.process.kill()
        raise


def open_app(running: Desktop, sock: socket.socket, session_id: int, app_id: str = "org.example.counter") -> None:
    send(sock, AppSurfaceCreated(app_id=app_id, session_id=session_id, pid=os.getpid(), token=f"token-{session_id}"))
    assert receive(sock) == {"type": "surface_ready", "session_id": session_id}


def shell_ready(running: Desktop) -> None:
    wait_until(lambda: running.events(running.shell_log, "xdg_configure"), what="the shell's window")


# -- layout and roles ---------------------------------------------------------------------------

def test_panel_covers_the_output_and_an_app_gets_the_work_area(desktop: Desktop) -> None:
    shell_ready(desktop)
    desktop.wait_for_colour(WORK_AREA_POINT, BLUE, "panel-only")
    panel = wait_until(lambda: [e for e in desktop.events(desktop.shell_log, "zweft_configure") if e["state"] & 4],
                       what="the panel's activated configure")
    assert panel[-1] | {"pid": 0} == {"pid": 0, "event": "zweft_configure", "x": 0, "y": 0, "width": WIDTH,
                                     "height": HEIGHT, "state": 1 | 4}  # maximized | activated
    assert desktop.events(desktop.shell_log, "xdg_configure")[-1]["width"] == WIDTH

    with desktop.connect_ipc() as sock:
        open_app(desktop, sock, 1)
        at = desktop.pixels("panel-and-app")
        assert at(*WORK_AREA_POINT) == RED
        assert at(*TASKBAR_POINT) == BLUE  # the bottom 48 px stay the shell's taskbar
        assert at(WIDTH - 1, HEIGHT - 48 - 1) == RED
        assert at(0, HEIGHT - 48) == BLUE
        assert at(2, 4) not in (RED, BLUE)  # the cursor is drawn at (0, 0), theme or not (wlroots' built-in arrow)
        xdg = desktop.events(desktop.app_log, "xdg_configure")[-1]
        assert (xdg["width"], xdg["height"]) == (WIDTH, HEIGHT - 48)
        app = desktop.events(desktop.app_log, "zweft_configure")
        assert app[-1]["width"] == WIDTH and app[-1]["height"] == HEIGHT - 48 and app[-1]["state"] == 1 | 4
        # the session token came on stdin, never in argv or the environment
        started = desktop.events(desktop.app_log, "started")[0]
        assert started["argv"] == ["org.example.counter", "1"] and not started["env_token"]
        assert desktop.events(desktop.app_log, "token")[0]["token"] == "token-1"
        # the panel lost focus to the app (the shell process logs it in its own time); checked while
        # the IPC connection is open, since its end closes the session's window
        wait_until(lambda: panel_focus(desktop)[-2:] == [1, 0], what="the panel's focus_changed(0)")
    # appd's connection ended: its session's window went and the panel has the focus again
    wait_until(lambda: panel_focus(desktop)[-3:] == [1, 0, 1], what="the panel's focus_changed(1) again")


def panel_focus(desktop: Desktop) -> list[int]:
    return [e["focused"] for e in desktop.events(desktop.shell_log, "focus_changed")]


def test_a_stranger_is_never_mapped_and_cannot_be_panel_or_application(desktop: Desktop) -> None:
    shell_ready(desktop)
    stranger = Client(desktop.wayland_socket)
    stranger.toplevel(0x00FF00)
    panel = stranger.zweft_window("panel")
    stranger.wait_for(lambda: any(e["event"] == "window_closed" for e in stranger.events), what="window_closed")
    stranger.zweft_window("application")
    stranger.wait_for(lambda: sum(e["event"] == "window_closed" for e in stranger.events) == 2,
                      what="the second window_closed")
    assert not [e for e in stranger.events if e["event"] == "zweft_configure"]
    stranger.wait_for(lambda: stranger.size != (0, 0), what="the xdg configure")  # it drew its buffer
    for _ in range(5):
        stranger.dispatch(0.05)
    at = desktop.pixels("stranger")
    assert at(*WORK_AREA_POINT) == BLUE and at(100, 100) == BLUE  # (the cursor is at 0,0)
    assert "not mapping a toplevel of pid" in desktop.stderr.read_text()
    # a request on a closed window is a defunct_window protocol error
    panel.set_geometry(0, 0, 10, 10)
    with pytest.raises(RuntimeError):
        stranger.wait_for(lambda: False, timeout=2)


# -- window management ---------------------------------------------------------------------------

class Input:
    """Clicks and keys through the virtual pointer/keyboard protocols (--test-input)."""

    def __init__(self, display: str) -> None:
        xkbcommon_xkb: Any = importlib.import_module("xkbcommon.xkb")  # untyped

        self.client = Client(display)
        from pywayland.protocol.wayland import WlSeat

        seat = self.client.bind(WlSeat, 1)
        self.pointer = self.client.bind(virtual_pointer().ZwlrVirtualPointerManagerV1).create_virtual_pointer(seat)
        self.keyboard = self.client.bind(virtual_keyboard().ZwpVirtualKeyboardManagerV1).create_virtual_keyboard(
            seat)
        keymap = xkbcommon_xkb.Context().keymap_new_from_names().get_as_bytes()
        fd = os.memfd_create("keymap")
        os.write(fd, keymap)
        self.keyboard.keymap(1, fd, len(keymap))
        os.close(fd)
        self.client.display.roundtrip()

    def click(self, x: int, y: int) -> None:
        now = int(time.monotonic() * 1000) & 0xFFFFFFFF
        self.pointer.motion_absolute(now, x, y, WIDTH, HEIGHT)
        self.pointer.frame()
        self.pointer.button(now, BTN_LEFT, 1)
        self.pointer.frame()
        self.pointer.button(now, BTN_LEFT, 0)
        self.pointer.frame()
        self.client.display.roundtrip()

    def alt(self, key: int) -> None:
        now = int(time.monotonic() * 1000) & 0xFFFFFFFF
        self.keyboard.key(now, KEY_LEFTALT, 1)
        self.keyboard.modifiers(ALT_MASK, 0, 0, 0)
        self.keyboard.key(now, key, 1)
        self.keyboard.key(now, key, 0)
        self.keyboard.key(now, KEY_LEFTALT, 0)
        self.keyboard.modifiers(0, 0, 0, 0)
        self.client.display.roundtrip()


def test_click_focuses_alt_tab_switches_and_focus_request_raises(desktop: Desktop) -> None:
    shell_ready(desktop)
    with desktop.connect_ipc() as sock:
        open_app(desktop, sock, 1)
        open_app(desktop, sock, 2)
        desktop.wait_for_colour(WORK_AREA_POINT, GREEN, "two-apps")  # the newest app is on top
        keys = Input(desktop.wayland_socket)
        keys.alt(KEY_TAB)
        desktop.wait_for_colour(WORK_AREA_POINT, RED, "after-alt-tab")
        send(sock, AppFocusRequest(session_id=2))
        desktop.wait_for_colour(WORK_AREA_POINT, GREEN, "after-focus-request")
        # a click on the taskbar focuses the shell (which stays below the apps)
        keys.click(*TASKBAR_POINT)
        wait_until(lambda: desktop.events(desktop.shell_log, "focus_changed")[-1]["focused"] == 1,
                   what="the shell's focus_changed(1)")
        wait_until(lambda: desktop.events(desktop.app_log, "focus_changed")[-1]["focused"] == 0,
                   what="the app's focus_changed(0)")
        assert desktop.pixels("after-taskbar-click")(*WORK_AREA_POINT) == GREEN
        keys.click(*WORK_AREA_POINT)
        wait_until(lambda: desktop.events(desktop.shell_log, "focus_changed")[-1]["focused"] == 0,
                   what="the shell's focus_changed(0)")


def test_alt_f4_closes_the_focused_app_and_appd_hears_window_closed(desktop: Desktop) -> None:
    shell_ready(desktop)
    with desktop.connect_ipc() as sock:
        open_app(desktop, sock, 3)
        Input(desktop.wayland_socket).alt(KEY_F4)
        assert receive(sock) == {"type": "window_closed", "session_id": 3}
        assert desktop.events(desktop.app_log, "close_requested")
        desktop.wait_for_colour(WORK_AREA_POINT, BLUE, "after-alt-f4")


def test_app_surface_destroyed_stops_an_app_shell_that_ignores_close(tmp_path: Path) -> None:
    running = start_desktop(tmp_path, app_args="--ignore-close")
    try:
        shell_ready(running)
        with running.connect_ipc() as sock:
            open_app(running, sock, 1)
            pid = running.events(running.app_log, "started")[0]["pid"]
            send(sock, AppSurfaceDestroyed(session_id=1))
            wait_until(lambda: not Path(f"/proc/{pid}").exists() or "State:\tZ" in
                       Path(f"/proc/{pid}/status").read_text(), what="the app shell to be gone")
            running.wait_for_colour(WORK_AREA_POINT, BLUE, "after-app-surface-destroyed")
    finally:
        stop(running)


def test_a_standby_app_shell_takes_the_next_session_and_has_no_role_before(tmp_path: Path) -> None:
    running = start_desktop(tmp_path, "--app-shell-standby", app_args="--toplevel-before-session")
    try:
        shell_ready(running)
        with running.connect_ipc() as sock:
            open_app(running, sock, 1)  # before any standby is up: started for its session
            standby = wait_until(lambda: running.events(running.app_log, "standby_ready"), 15,
                                 what="a standby app shell once the window is mapped")[0]["pid"]
            # its toplevel asked for before it had a session was refused, like a stranger's
            assert f"not mapping a toplevel of pid {standby}: not the shell nor an app shell" in \
                running.stderr.read_text()
            open_app(running, sock, 2)
            started = {e["argv"][1]: e for e in running.events(running.app_log, "started")}
            assert started["1"]["pid"] != standby and "standby" not in started["1"]
            assert started["2"]["pid"] == standby and started["2"]["argv"] == ["org.example.counter", "2"]
            tokens = {e["pid"]: e["token"] for e in running.events(running.app_log, "token")}
            assert tokens[standby] == "token-2"
            running.wait_for_colour(WORK_AREA_POINT, GREEN, "standby-took-session-2")  # session 2's colour
            # a new standby replaces it; one killed before use is reported and a launch starts cold
            replacement = wait_until(lambda: [e["pid"] for e in running.events(running.app_log, "standby_ready")
                                              if e["pid"] != standby], 15, what="the next standby")[0]
            os.kill(replacement, signal.SIGKILL)
            wait_until(lambda: f"the standby app shell (pid {replacement}) exited with status -9"
                       in running.stderr.read_text(), what="the dead standby reported")
            open_app(running, sock, 3)
            started = {e["argv"][1]: e for e in running.events(running.app_log, "started")}
            assert "standby" not in started["3"] and started["3"]["pid"] != replacement
    finally:
        stop(running)


def test_clipboard_from_the_shell_to_an_app(tmp_path: Path) -> None:
    running = start_desktop(tmp_path, app_args="--print-selection", shell_args="--set-selection 'copied text'")
    try:
        shell_ready(running)
        Input(running.wayland_socket)  # a keyboard: focus comes with a keyboard serial, which a copy needs
        wait_until(lambda: running.events(running.shell_log, "selection_set"), what="the shell's copy")
        with running.connect_ipc() as sock:
            open_app(running, sock, 1)
            pasted = wait_until(lambda: running.events(running.app_log, "selection"), what="the app's paste")
            assert pasted[0]["text"] == "copied text"
    finally:
        stop(running)


# -- the IPC socket ------------------------------------------------------------------------------

def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_bad_ipc_frames_drop_the_connection_and_the_compositor_keeps_serving(desktop: Desktop) -> None:
    shell_ready(desktop)
    with desktop.connect_ipc() as sock:  # an unknown type is skipped, the connection stays
        sock.sendall(encode_frame({"type": "from_the_future", "session_id": 1}))
        open_app(desktop, sock, 1)
    for garbage in (b"\x03\x00\x00\x00\xc1\xc1\xc1",  # not msgpack
                    (5 << 20).to_bytes(4, "little"),  # longer than 4 MiB
                    encode_frame({"type": "app_surface_created", "session_id": -1}),  # invalid fields
                    encode_frame([1, 2, 3])):  # not a map
        with desktop.connect_ipc() as sock:
            sock.sendall(garbage)
            assert closed_by_peer(sock)
    log = desktop.stderr.read_text()
    assert "Traceback" not in log and log.count("appd connection closed: bad frame") == 4
    with desktop.connect_ipc() as sock:
        open_app(desktop, sock, 2)


def test_ipc_peer_in_another_cgroup_is_refused(tmp_path: Path) -> None:
    running = start_desktop(tmp_path, "--appd-cgroup", "/system.slice/weft-appd.service/supervisor")
    try:
        with running.connect_ipc() as sock:
            sock.sendall(encode_frame(AppSurfaceCreated(app_id="org.example.counter", session_id=1, pid=1,
                                                        token="t")))
            assert closed_by_peer(sock)
        assert "refused an IPC connection" in running.stderr.read_text()
        assert not running.events(running.app_log, "started")
    finally:
        stop(running)


def pid_gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text()


def test_losing_appd_closes_its_windows_and_a_new_appd_gets_fresh_app_shells(desktop: Desktop) -> None:
    shell_ready(desktop)
    with desktop.connect_ipc() as sock:
        open_app(desktop, sock, 1)
        desktop.wait_for_colour(WORK_AREA_POINT, RED, "before-appd-lost")
    old_pid = desktop.events(desktop.app_log, "started")[0]["pid"]
    wait_until(lambda: pid_gone(old_pid), what="the old app shell to be gone")
    desktop.wait_for_colour(WORK_AREA_POINT, BLUE, "after-appd-lost")
    with desktop.connect_ipc() as sock:  # the restarted appd numbers sessions from 1 again
        open_app(desktop, sock, 1)
        started = desktop.events(desktop.app_log, "started")
        assert len(started) == 2 and started[1]["pid"] != old_pid
        assert desktop.events(desktop.app_log, "token")[-1]["token"] == "token-1"
        desktop.wait_for_colour(WORK_AREA_POINT, RED, "new-appd-session-1")
        sock.settimeout(1)  # the old session's end is not reported to the new appd
        with pytest.raises(TimeoutError):
            sock.recv(1)


def test_a_new_appd_connection_replaces_the_old_one_and_its_windows(desktop: Desktop) -> None:
    shell_ready(desktop)
    with desktop.connect_ipc() as first:
        open_app(desktop, first, 1)
        old_pid = desktop.events(desktop.app_log, "started")[0]["pid"]
        with desktop.connect_ipc() as second:
            assert closed_by_peer(first)
            wait_until(lambda: pid_gone(old_pid), what="the old app shell to be gone")
            open_app(desktop, second, 1)


# -- the IPC outbox (in process: the server on its own event loop) --------------------------------

def test_ipc_outbox_drains_when_appd_reads_late_and_a_stuck_appd_is_dropped(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    from pywayland.server import EventLoop

    from weft.daemons.compositor.ipc import MAX_UNSENT_BYTES, AppdServer, bind_listener
    from weft.daemons.protocol import SurfaceReady

    loop = EventLoop()
    lost: list[bool] = []
    path = tmp_path / "run" / "compositor.sock"
    server = AppdServer(loop, bind_listener(path), None, lambda _m: None, lambda: lost.append(True))
    try:
        appd = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        appd.connect(str(path))
        wait_until(lambda: loop.dispatch(50) is None and server.connected, what="the connection")
        frame = encode_frame(SurfaceReady(session_id=1))
        count = 400_000 // len(frame)  # more than the socket buffer holds, less than the cap
        for _ in range(count):
            server.send(SurfaceReady(session_id=1))
        received = bytearray()
        appd.setblocking(False)
        deadline = time.monotonic() + 10
        while len(received) < count * len(frame) and time.monotonic() < deadline:
            loop.dispatch(10)  # only the writable watch sends the rest: nothing else happens
            with contextlib.suppress(BlockingIOError):
                received += appd.recv(1 << 20)
        assert len(received) == count * len(frame) and server.connected and not lost
        for _ in range(MAX_UNSENT_BYTES // len(frame) + 10_000):  # appd stops reading
            server.send(SurfaceReady(session_id=1))
            if not server.connected:
                break
        assert not server.connected and lost == [True]
        assert "it left more than" in caplog.text
        appd.close()
    finally:
        server.close()
        loop.destroy()


# -- rendering ------------------------------------------------------------------------------------

def frame_totals(running: Desktop) -> tuple[int, int]:
    """(rendered, skipped) frames since start, from the SIGUSR1 report."""
    before = running.stderr.read_text().count("frame time:")
    running.process.send_signal(signal.SIGUSR1)
    wait_until(lambda: running.stderr.read_text().count("frame time:") > before, what="the frame time report")
    line = [line for line in running.stderr.read_text().splitlines() if "frame time:" in line][-1]
    match = re.search(r"since start (\d+) rendered, (\d+) skipped", line)
    assert match, line
    return int(match.group(1)), int(match.group(2))


def test_an_idle_desktop_renders_nothing_and_frame_callbacks_still_pace_clients(tmp_path: Path) -> None:
    running = start_desktop(tmp_path, app_args="--frames 60")
    try:
        shell_ready(running)
        with running.connect_ipc() as sock:
            open_app(running, sock, 1)
            # 60 commits without new content, each waiting for its frame callback
            started = time.monotonic()
            wait_until(lambda: running.events(running.app_log, "frames_done"), what="60 frame callbacks")
            assert time.monotonic() - started < 5
            running.wait_for_colour(WORK_AREA_POINT, RED, "idle")
            time.sleep(0.5)
            rendered, skipped = frame_totals(running)
            time.sleep(2)
            rendered_after, skipped_after = frame_totals(running)
        assert rendered_after - rendered <= 1, (rendered, rendered_after)
        assert skipped_after - skipped > 60  # the headless backend's 60 Hz timer kept ticking
    finally:
        stop(running)
