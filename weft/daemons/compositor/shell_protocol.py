"""zweft_shell_unstable_v1, served (protocol/weft-shell-unstable-v1.xml; docs/desktop.md).

Roles come from the client's pid, never from the `role` string: the system shell's pid gets
`panel`, an app shell's pid gets `application` for the session the compositor started it for.
A window whose client may not have the role it asks for (or any role: a stranger) gets
`window_closed` at once, and a `defunct_window` error on any later request. Why not a protocol
error: it would kill the client's whole connection, and the shells share their process with
other Wayland connections (WebKit's); `window_closed` is the protocol's own "no window".
"""
from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pywayland
from pywayland.server import Display

from weft.daemons.compositor.bindings import decode_server_requests, dispatch_requests, zweft
from weft.daemons.compositor.layout import Rect
from weft.daemons.compositor.loop import guarded
from weft.daemons.compositor.peers import resource_pid

log = logging.getLogger("weft.compositor")
DEFUNCT_WINDOW = 0
GESTURES_SINCE = 2


class State(enum.IntFlag):
    MAXIMIZED = 1
    FULLSCREEN = 2
    ACTIVATED = 4
    RESIZING = 8


@dataclass(frozen=True)
class Role:
    kind: str  # "panel" | "application"
    session_id: int | None = None


@dataclass
class ShellWindow:
    resource: Any
    manager: Any
    pid: int
    role: Role | None  # None: refused
    app_id: str
    title: str
    closed: bool = False
    focused: bool | None = None


class ShellProtocol:
    """The zweft_shell_manager_v1 global and its windows."""

    def __init__(self, display: Display, role_of_pid: Callable[[int], Role | None],
                 geometry: Callable[[Role], Rect], is_focused: Callable[[Role], bool]) -> None:
        module = zweft()
        self._window_interface = module.ZweftShellWindowV1
        decode_server_requests(module.ZweftShellManagerV1)
        decode_server_requests(module.ZweftShellWindowV1)
        self._role_of_pid = role_of_pid
        self._geometry = geometry
        self._is_focused = is_focused
        self.windows: list[ShellWindow] = []
        self._managers: list[Any] = []
        self._global = module.ZweftShellManagerV1.global_class(display, GESTURES_SINCE)
        self._global.bind_func = guarded(self._bind)

    # -- requests ---------------------------------------------------------------------------
    def _bind(self, manager: Any) -> None:
        self._managers.append(manager)  # pywayland needs the Python object alive while the resource is
        dispatch_requests(manager)
        manager.dispatcher["destroy"] = guarded(lambda resource: resource.destroy())
        manager.dispatcher["create_window"] = guarded(self._create_window)
        manager.dispatcher.destructor = guarded(self._manager_gone)

    def _manager_gone(self, manager: Any) -> None:
        manager._ptr = None  # libwayland freed it
        for window in self.windows:
            if window.manager is manager:
                self._close(window)
        self._managers = [m for m in self._managers if m is not manager]

    def _create_window(self, manager: Any, new_id: int, app_id: str | None, title: str | None, role: str | None,
                       _surface: Any, _x: int, _y: int, _width: int, _height: int) -> None:
        client = pywayland.lib.wl_resource_get_client(manager._ptr)
        resource = self._window_interface.resource_class(client, manager.version, new_id)
        dispatch_requests(resource)
        pid = resource_pid(manager._ptr)
        granted = self._grant(pid, role or "")
        window = ShellWindow(resource, manager, pid, granted, app_id or "", title or "")
        self.windows.append(window)
        resource.dispatcher["destroy"] = guarded(lambda r: r.destroy())
        def update_metadata(_resource: Any, title: str | None, _role: str | None) -> None:
            self._update_metadata(window, title)

        resource.dispatcher["update_metadata"] = guarded(update_metadata)
        resource.dispatcher["set_geometry"] = guarded(lambda r, *_rect: self._set_geometry(window))
        def forget(_resource: Any) -> None:
            self._forget(window)

        resource.dispatcher.destructor = guarded(forget)
        if granted is None:
            log.warning("zweft: pid %d may not have a %r window: sent window_closed", pid, role)
            self._close(window)
            return
        log.info("zweft: %s window of pid %d (%s)", granted.kind, pid, window.app_id)
        self.configure(window)

    def _grant(self, pid: int, requested: str) -> Role | None:
        role = self._role_of_pid(pid)
        if role is None:
            return None
        if requested == "panel" and role.kind != "panel":
            return None
        if requested == "application" and role.kind != "application":
            return None
        return role

    def _check_live(self, window: ShellWindow) -> bool:
        if window.closed:
            window.resource._post_error(DEFUNCT_WINDOW, "request on a window after window_closed")
            return False
        return True

    def _update_metadata(self, window: ShellWindow, title: str | None) -> None:
        if self._check_live(window):
            window.title = title or ""

    def _set_geometry(self, window: ShellWindow) -> None:
        # The compositor is authoritative: the answer is where the window really is.
        if self._check_live(window):
            self.configure(window)

    def _forget(self, window: ShellWindow) -> None:
        window.resource._ptr = None  # libwayland freed it
        self.windows = [w for w in self.windows if w is not window]

    # -- events -----------------------------------------------------------------------------
    def configure(self, window: ShellWindow) -> None:
        if window.closed or window.role is None or window.resource._ptr is None:
            return
        rect = self._geometry(window.role)
        state = State.MAXIMIZED | (State.ACTIVATED if self._is_focused(window.role) else State(0))
        window.resource.configure(rect.x, rect.y, rect.width, rect.height, int(state))

    def configure_all(self) -> None:
        for window in self.windows:
            self.configure(window)

    def focus_changed(self) -> None:
        for window in self.windows:
            if window.closed or window.role is None or window.resource._ptr is None:
                continue
            focused = self._is_focused(window.role)
            if focused != window.focused:
                window.focused = focused
                window.resource.focus_changed(1 if focused else 0)
                self.configure(window)

    def _close(self, window: ShellWindow) -> None:
        if window.closed:
            return
        window.closed = True
        if window.resource._ptr is not None:
            window.resource.window_closed()

    def close_session(self, session_id: int) -> None:
        for window in self.windows:
            if window.role is not None and window.role.session_id == session_id:
                self._close(window)

    def navigation_gesture(self, kind: int, fingers: int, dx: float, dy: float) -> None:
        for window in self.windows:
            if (window.role is not None and window.role.kind == "panel" and not window.closed
                    and window.resource._ptr is not None and window.resource.version >= GESTURES_SINCE):
                window.resource.navigation_gesture(kind, fingers, dx, dy)
