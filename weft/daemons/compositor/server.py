"""The compositor: wlroots backend and renderer, globals, outputs, and the wiring of windows,
input, the shells' processes, zweft and appd's IPC onto one wl_display event loop."""
from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import time
from typing import Any

from pywayland.server import Display, EventLoop, Listener
from wlroots import helper
from wlroots.util.clock import Timespec
from wlroots.wlr_types import DataDeviceManager, Output, OutputLayout, Seat, XdgShell
from wlroots.wlr_types.primary_selection_v1 import PrimarySelectionV1DeviceManager
from wlroots.wlr_types.scene import Scene, SceneOutput
from wlroots.wlr_types.screencopy_v1 import ScreencopyManagerV1
from wlroots.wlr_types.server_decoration import ServerDecorationManager, ServerDecorationManagerMode
from wlroots.wlr_types.virtual_keyboard_v1 import VirtualKeyboardManagerV1
from wlroots.wlr_types.virtual_pointer_v1 import VirtualPointerManagerV1
from wlroots.wlr_types.xdg_decoration_v1 import XdgDecorationManagerV1, XdgToplevelDecorationV1Mode
from wlroots.wlr_types.xdg_output_v1 import XdgOutputManagerV1

from weft.daemons.appd.sd_notify import sd_notify
from weft.daemons.compositor.children import AppShells, ShellSupervisor, child_environment
from weft.daemons.compositor.config import WLR_BACKENDS, CompositorConfig, resolve_backend
from weft.daemons.compositor.frames import FrameTimes
from weft.daemons.compositor.input import Input
from weft.daemons.compositor.ipc import AppdServer, bind_listener
from weft.daemons.compositor.layout import Rect
from weft.daemons.compositor.loop import connect, guarded
from weft.daemons.compositor.shell_protocol import Role, ShellProtocol
from weft.daemons.compositor.standby import AFTER_MAPPED_S, AFTER_PANEL_S, StandbyAppShell
from weft.daemons.compositor.windows import WindowManager
from weft.daemons.protocol import (
    AppFocusRequest,
    AppSurfaceCreated,
    AppSurfaceDestroyed,
    SurfaceReady,
    ToCompositor,
    WindowClosed,
)
from weft.errors import WeftError

log = logging.getLogger("weft.compositor")
REFRESH_MHZ = 60000


def prepare_environment(config: CompositorConfig) -> None:
    """wlroots reads its backend choice from the environment (pywlroots exposes only autocreate)."""
    backend = resolve_backend(config.backend, dict(os.environ))
    os.environ["WLR_BACKENDS"] = WLR_BACKENDS[backend]
    os.environ["WLR_RENDERER"] = "pixman"  # software rendering: the VM has no GPU, and it is enough for 2D
    os.environ["WLR_LIBINPUT_NO_DEVICES"] = "1"  # a seat without a keyboard or mouse yet still starts
    if backend == "headless":
        os.environ["WLR_HEADLESS_OUTPUTS"] = "1"


class Compositor:
    def __init__(self, config: CompositorConfig) -> None:
        self.config = config
        self.exit_code = 0
        self.display = Display()
        self.loop: EventLoop = self.display.get_event_loop()
        try:
            self._compositor, self.allocator, self.renderer, self.backend = helper.build_compositor(self.display)
        except RuntimeError as exc:
            raise WeftError(f"cannot start the {os.environ.get('WLR_BACKENDS')} backend: {exc} (see the wlroots "
                            "lines above; DRM needs a seat: seatd or logind)") from None
        self.layout = OutputLayout()
        self.scene = Scene(self.layout)
        self.outputs: list[tuple[Output, SceneOutput, list[Listener]]] = []
        self.frames = FrameTimes()
        self._globals: list[Any] = [
            ScreencopyManagerV1(self.display), DataDeviceManager(self.display),
            PrimarySelectionV1DeviceManager(self.display), XdgOutputManagerV1(self.display, self.layout),
        ]
        self.seat = Seat(self.display, "seat0")
        self.xdg_shell = XdgShell(self.display)
        self._decorations()
        self.socket_name = ""  # set by run(): add_socket comes after the globals
        env = lambda: child_environment(os.environ, self.socket_name)  # noqa: E731 - read at spawn time
        self.shell = ShellSupervisor(self.loop, config.shell, env, self._give_up) if config.shell else None
        self.standby = StandbyAppShell(self.loop, config.app_shell, env) if config.app_shell_standby else None
        self.app_shells = AppShells(self.loop, config.app_shell, env, self._app_shell_exited, self.standby)
        self.windows = WindowManager(self.loop, self.scene, self.seat, self.role_of_pid, self.output_rect,
                                     self._surface_ready, self._window_closed, self.app_shells.terminate)
        self.shell_protocol = ShellProtocol(self.display, self.role_of_pid, self.windows.rect_for,
                                            self.windows.is_focused)
        self.windows.shell_protocol = self.shell_protocol
        self.windows.panel_mapped = self._panel_mapped
        self.input = Input(self.display, self.layout, self.seat, self.windows,
                           self.shell_protocol.navigation_gesture)
        self._closed_reported: set[int] = set()
        self._closing_by_appd: set[int] = set()
        self._announced: set[int] = set()  # sessions the current appd connection opened windows for
        self._listeners = [connect(self.backend.new_output_event, self._new_output),
                           connect(self.backend.new_input_event, self._new_input),
                           connect(self.xdg_shell.new_surface_event, lambda _l, xdg: self.windows.new_surface(xdg))]
        if config.test_input:
            self._enable_test_input()
        self.appd: AppdServer | None = None
        self._signals = [self.loop.add_signal(signum, guarded(self._on_signal))
                         for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGUSR1)]

    # -- globals ----------------------------------------------------------------------------
    def _decorations(self) -> None:
        """Clients draw no decorations and WEFT draws none: GTK 3 follows the KDE protocol,
        GTK 4 and others xdg-decoration; both say 'server side'."""
        kde = ServerDecorationManager.create(self.display)
        kde.set_default_mode(ServerDecorationManagerMode.SERVER)
        xdg = XdgDecorationManagerV1.create(self.display)
        listener = connect(xdg.new_toplevel_decoration_event,
                           lambda _l, decoration: decoration.set_mode(XdgToplevelDecorationV1Mode.SERVER_SIDE))
        self._globals += [kde, xdg, listener]

    def _enable_test_input(self) -> None:
        """--test-input: virtual pointer and keyboard protocols, so tests can click and type.
        They let any client inject input into any other: never in production."""
        log.warning("--test-input: any client may inject pointer and keyboard input")
        pointers = VirtualPointerManagerV1(self.display)
        keyboards = VirtualKeyboardManagerV1(self.display)
        on_pointer = connect(pointers.new_virtual_pointer_event,
                             lambda _l, event: self.input.add_device(event.new_pointer.input_device))
        on_keyboard = connect(keyboards.new_virtual_keyboard_event,
                              lambda _l, device: self.input.add_device(device.input_device, keymap_from_client=True))
        self._globals += [pointers, keyboards, on_pointer, on_keyboard]

    # -- outputs ----------------------------------------------------------------------------
    def _new_output(self, _l: Any, output: Output) -> None:
        if self.outputs:
            log.info("output %s ignored: WEFT drives one output", output.name)
            return
        output.init_render(self.allocator, self.renderer)
        mode = output.preferred_mode()
        if mode is not None and not (output.is_headless or self.config.backend in ("wayland", "x11")):
            output.set_mode(mode)
        else:
            output.set_custom_mode(*self.config.size, REFRESH_MHZ)
        output.enable()
        output.commit()
        self.layout.add_auto(output)
        scene_output = self.scene.get_scene_output(output)
        frame = connect(output.frame_event, lambda _l, _d: self._frame(output, scene_output))
        self.outputs.append((output, scene_output, [frame]))
        width, height = output.effective_resolution()
        log.info("output %s: %dx%d", output.name, width, height)
        self.input.output_added(output.scale)
        self.windows.relayout()

    def _frame(self, output: Output, scene_output: SceneOutput) -> None:
        # wlroots sets needs_frame (and schedules a frame) for everything that needs one: the
        # scene's damage (new surface content, nodes moved/raised/destroyed, a software cursor
        # moved), a commit asking for a frame callback, a screencopy. A frame event without it
        # (the headless backend's free-running 60 Hz timer) renders, commits and sends nothing.
        if not output._ptr.needs_frame:
            self.frames.skip()
            return
        start = time.perf_counter()
        scene_output.commit()
        self.frames.add((time.perf_counter() - start) * 1000)
        scene_output.send_frame_done(Timespec.get_monotonic_time())
        if log.isEnabledFor(logging.DEBUG) and self.frames.count % 300 == 0:
            log.debug("%s", self.frames.summary(len(self.windows.views())))

    def output_rect(self) -> Rect:
        if not self.outputs:
            return Rect(0, 0, *self.config.size)
        width, height = self.outputs[0][0].effective_resolution()
        return Rect(0, 0, width, height)

    def _new_input(self, _l: Any, device: Any) -> None:
        self.input.add_device(device)

    # -- roles ------------------------------------------------------------------------------
    def role_of_pid(self, pid: int) -> Role | None:
        if self.shell is not None and pid == self.shell.pid:
            return Role("panel")
        session_id = self.app_shells.session_of_pid(pid)
        if session_id is not None:
            return Role("application", session_id)
        return None

    # -- appd -------------------------------------------------------------------------------
    def _from_appd(self, message: ToCompositor) -> None:
        if isinstance(message, AppSurfaceCreated):
            self._closed_reported.discard(message.session_id)
            self._closing_by_appd.discard(message.session_id)
            self._announced.add(message.session_id)
            self.app_shells.start(message.app_id, message.session_id, message.token)
        elif isinstance(message, AppSurfaceDestroyed):
            self._announced.discard(message.session_id)
            self._closing_by_appd.add(message.session_id)
            self.windows.close_session(message.session_id)
            self.app_shells.terminate(message.session_id)
        elif isinstance(message, AppFocusRequest) and not self.windows.focus_session(message.session_id):
            log.info("focus request for session %d, which has no window", message.session_id)

    def _appd_lost(self) -> None:
        """appd's connection ended (it crashed or restarted): the next appd numbers sessions from 1
        again and re-announces its live ones, so every window of this connection goes now."""
        if self._announced:
            log.info("appd connection lost: closing the windows of sessions %s", sorted(self._announced))
        for session_id in sorted(self._announced):
            self.windows.forget_session(session_id)
            self.app_shells.retire(session_id)
        self._announced.clear()
        self._closed_reported.clear()
        self._closing_by_appd.clear()

    def _panel_mapped(self) -> None:
        if self.standby is not None:
            self.standby.start_in(AFTER_PANEL_S)

    def _surface_ready(self, session_id: int) -> None:
        if self.standby is not None:
            self.standby.start_in(AFTER_MAPPED_S)
        if self.appd is not None:
            self.appd.send(SurfaceReady(session_id=session_id))

    def _window_closed(self, session_id: int) -> None:
        if session_id in self._closed_reported or session_id in self._closing_by_appd:
            return
        self._closed_reported.add(session_id)
        if self.appd is not None:
            self.appd.send(WindowClosed(session_id=session_id))

    def _app_shell_exited(self, session_id: int) -> None:
        self.shell_protocol.close_session(session_id)
        self._window_closed(session_id)
        self._closing_by_appd.discard(session_id)

    # -- process ----------------------------------------------------------------------------
    def _on_signal(self, signum: int, _data: object) -> int:
        if signum == signal.SIGCHLD:
            if self.shell is not None:
                self.shell.reap()
            self.app_shells.reap()
        elif signum == signal.SIGUSR1:
            log.info("%s", self.frames.summary(len(self.windows.views())))
        else:
            log.info("stopping (%s)", signal.Signals(signum).name)
            self.display.terminate()
        return 0

    def _give_up(self, why: str) -> None:
        log.error("%s: exiting so that the service manager restarts the desktop", why)
        self.exit_code = 1
        self.display.terminate()

    def run(self) -> int:
        self.socket_name = self.display.add_socket()
        if isinstance(self.socket_name, bytes):
            self.socket_name = self.socket_name.decode()
        os.environ["WAYLAND_DISPLAY"] = self.socket_name
        try:
            self.backend.start()
        except RuntimeError:
            raise WeftError(f"cannot start the {os.environ.get('WLR_BACKENDS')} backend (see the wlroots "
                            "lines above)") from None
        self.appd = AppdServer(self.loop, bind_listener(self.config.ipc_socket), self.config.appd_cgroup,
                               guarded(self._from_appd), guarded(self._appd_lost))
        if self.shell is not None:
            self.shell.start()
        elif self.standby is not None:
            self.standby.start_in(AFTER_MAPPED_S)
        sd_notify(f"READY=1\nSTATUS=WAYLAND_DISPLAY={self.socket_name}")
        log.info("WAYLAND_DISPLAY=%s; IPC socket %s", self.socket_name, self.config.ipc_socket)
        print(f"WAYLAND_DISPLAY={self.socket_name}", file=sys.stdout, flush=True)
        if self.config.app_shell:
            log.info("app shell: %s <app_id> <session_id>", shlex.join(self.config.app_shell))
        self.display.run()
        sd_notify("STOPPING=1")
        if self.shell is not None:
            self.shell.stop()
        self.app_shells.stop_all()
        self.appd.close()
        self.config.ipc_socket.unlink(missing_ok=True)
        return self.exit_code

    def destroy(self) -> None:
        self.display.destroy()
