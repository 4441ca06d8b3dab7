"""Window management: who may map a toplevel, where it goes, stacking and focus.

A toplevel is mapped only for the system shell's pid (the panel: the whole output, bottom of
the stack) or an app shell's pid (that session's app window: the work area, maximized, above
the panel). Any other client's toplevel is never given a scene node, so it is never shown and
never gets input. The focused app is on top; the panel has focus only when no app is open.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pywayland.server import EventLoop, Listener
from wlroots.util.box import Box
from wlroots.wlr_types.scene import Scene, SceneNode
from wlroots.wlr_types.xdg_shell import XdgSurface, XdgSurfaceRole

from weft.daemons.compositor.layout import Rect, panel_rect, work_area
from weft.daemons.compositor.loop import Timer, connect
from weft.daemons.compositor.peers import surface_pid
from weft.daemons.compositor.shell_protocol import Role, ShellProtocol
from weft.daemons.compositor.wlr_util import address, destroy_scene_node, keyboard_enter, set_maximized

log = logging.getLogger("weft.compositor")
CLOSE_GRACE_S = 3.0  # after an xdg close, the app shell gets SIGTERM if its window is still there
TILED_ALL_EDGES = 15  # xdg_toplevel tiled left|right|top|bottom: no shadows, no rounded corners


@dataclass
class View:
    xdg: XdgSurface
    node: SceneNode
    pid: int
    role: Role
    mapped: bool = False
    listeners: list[Listener] = field(default_factory=list)

    @property
    def is_panel(self) -> bool:
        return self.role.kind == "panel"


class WindowManager:
    def __init__(self, loop: EventLoop, scene: Scene, seat: Any, role_of_pid: Callable[[int], Role | None],
                 output_rect: Callable[[], Rect], surface_ready: Callable[[int], None],
                 window_closed: Callable[[int], None], terminate_app_shell: Callable[[int], None]) -> None:
        self._loop = loop
        self._scene = scene
        self._seat = seat
        self._role_of_pid = role_of_pid
        self._output_rect = output_rect
        self._surface_ready = surface_ready
        self._window_closed = window_closed
        self._terminate_app_shell = terminate_app_shell
        self.shell_protocol: ShellProtocol | None = None
        self.panel_mapped: Callable[[], None] = lambda: None
        self.panel: View | None = None
        self.apps: list[View] = []  # stacking order, bottom → top
        self.focused: View | None = None
        self._nodes: dict[int, SceneNode] = {}  # xdg surface address → its scene node (popups' parents)
        self._refused_pids: set[int] = set()
        self._ready_sent: set[int] = set()
        self._close_timers: dict[int, Timer] = {}
        self._keep: list[Any] = []  # listeners of refused surfaces, until they go

    # -- geometry ---------------------------------------------------------------------------
    def rect_for(self, role: Role) -> Rect:
        output = self._output_rect()
        return panel_rect(output) if role.kind == "panel" else work_area(output)

    def is_focused(self, role: Role) -> bool:
        return self.focused is not None and self.focused.role == role

    def relayout(self) -> None:
        for view in self.views():
            self._configure(view)
        if self.shell_protocol is not None:
            self.shell_protocol.configure_all()

    def _configure(self, view: View) -> None:
        rect = self.rect_for(view.role)
        view.node.set_position(rect.x, rect.y)
        view.xdg.set_size(rect.width, rect.height)
        set_maximized(view.xdg, True)
        view.xdg.set_tiled(TILED_ALL_EDGES)

    def views(self) -> list[View]:
        """Every view, bottom → top."""
        return ([self.panel] if self.panel is not None else []) + self.apps

    # -- new surfaces -----------------------------------------------------------------------
    def new_surface(self, xdg: XdgSurface) -> None:
        if xdg.role == XdgSurfaceRole.POPUP:
            self._new_popup(xdg)
            return
        if xdg.role != XdgSurfaceRole.TOPLEVEL:
            return
        pid = surface_pid(xdg.surface)
        role = self._role_of_pid(pid)
        if role is None or (role.kind == "panel" and self.panel is not None) or (
                role.kind == "application" and any(v.role == role for v in self.apps)):
            self._refuse(xdg, pid, role)
            return
        node = SceneNode.xdg_surface_create(self._scene.node, xdg)
        view = View(xdg, node, pid, role)
        self._nodes[address(xdg._ptr)] = node
        view.listeners = [connect(xdg.map_event, lambda _l, _d: self._mapped(view)),
                          connect(xdg.unmap_event, lambda _l, _d: self._unmapped(view)),
                          connect(xdg.destroy_event, lambda _l, _d: self._destroyed(view))]
        if view.is_panel:
            self.panel = view
            node.lower_to_bottom()
        else:
            self.apps.append(view)
        self._configure(view)
        log.info("%s toplevel of pid %d%s", role.kind, pid,
                 f" (session {role.session_id})" if role.session_id is not None else "")

    def _refuse(self, xdg: XdgSurface, pid: int, role: Role | None) -> None:
        if pid not in self._refused_pids:
            self._refused_pids.add(pid)
            why = "not the shell nor an app shell" if role is None else f"its {role.kind} window exists already"
            log.warning("not mapping a toplevel of pid %d: %s", pid, why)

        def forget(_l: Any, _d: Any) -> None:
            self._keep = [k for k in self._keep if k is not on_destroy]

        on_destroy = connect(xdg.destroy_event, forget)
        self._keep.append(on_destroy)

    def _new_popup(self, xdg: XdgSurface) -> None:
        popup = xdg.popup
        parent = XdgSurface.from_surface(popup.parent)
        parent_node = self._nodes.get(address(parent._ptr))
        if parent_node is None:
            return  # the parent is not shown (a refused client): neither is its popup
        toplevel = self._toplevel_view_of(parent)
        if toplevel is None:
            return  # its window was forgotten (its appd is gone) and its node destroyed
        node = SceneNode.xdg_surface_create(parent_node, xdg)
        key = address(xdg._ptr)
        self._nodes[key] = node
        # keep the popup on the output: a box in its toplevel's coordinates
        output = self._output_rect()
        origin = self.rect_for(toplevel.role)
        popup.unconstrain_from_box(Box(output.x - origin.x, output.y - origin.y, output.width, output.height))

        def forget(_l: Any, _d: Any) -> None:
            self._nodes.pop(key, None)
            self._keep = [k for k in self._keep if k is not on_destroy]

        on_destroy = connect(xdg.destroy_event, forget)
        self._keep.append(on_destroy)

    def _toplevel_view_of(self, xdg: XdgSurface) -> View | None:
        while xdg.role == XdgSurfaceRole.POPUP:
            xdg = XdgSurface.from_surface(xdg.popup.parent)
        key = address(xdg._ptr)
        return next((v for v in self.views() if address(v.xdg._ptr) == key), None)

    # -- life cycle -------------------------------------------------------------------------
    def _mapped(self, view: View) -> None:
        view.mapped = True
        if view.is_panel:
            view.node.lower_to_bottom()
            if self.focused is None:
                self.focus(view)
            self.panel_mapped()
            return
        session_id = view.role.session_id
        if session_id is not None and session_id not in self._ready_sent:
            self._ready_sent.add(session_id)
            self._surface_ready(session_id)
        self.focus(view)

    def _unmapped(self, view: View) -> None:
        view.mapped = False
        if self.focused is view:
            self.focused = None
            self.focus(self._next_focus())

    def _destroyed(self, view: View) -> None:
        self._nodes.pop(address(view.xdg._ptr), None)
        for listener in view.listeners:
            listener.remove()
        if view is self.panel:
            self.panel = None
        else:
            self.apps = [v for v in self.apps if v is not view]
            session_id = view.role.session_id
            if session_id is not None:
                self._session_window_gone(session_id)
        if self.focused is view:
            self.focused = None
            self.focus(self._next_focus())

    def _session_window_gone(self, session_id: int) -> None:
        self._clear_session(session_id)
        self._window_closed(session_id)

    def _clear_session(self, session_id: int) -> None:
        """Forget what is pending for the session's window: its close timer, its surface_ready,
        its zweft window (told window_closed)."""
        timer = self._close_timers.pop(session_id, None)
        if timer is not None:
            timer.remove()
        self._ready_sent.discard(session_id)
        if self.shell_protocol is not None:
            self.shell_protocol.close_session(session_id)

    def _next_focus(self) -> View | None:
        mapped_apps = [v for v in self.apps if v.mapped]
        if mapped_apps:
            return mapped_apps[-1]
        return self.panel if self.panel is not None and self.panel.mapped else None

    # -- focus and stacking -----------------------------------------------------------------
    def focus(self, view: View | None) -> None:
        previous = self.focused
        if view is not None and not view.is_panel:
            view.node.raise_to_top()
            self.apps = [v for v in self.apps if v is not view] + [view]
        if view is previous:
            return
        if previous is not None and previous.mapped:
            previous.xdg.set_activated(False)
        self.focused = view
        if view is None:
            self._seat.keyboard_clear_focus()
        else:
            view.xdg.set_activated(True)
            keyboard_enter(self._seat, view.xdg.surface)
        if self.shell_protocol is not None:
            self.shell_protocol.focus_changed()

    def focus_session(self, session_id: int) -> bool:
        view = self._app_of(session_id)
        if view is None or not view.mapped:
            return False
        self.focus(view)
        return True

    def cycle(self) -> None:
        """Alt+Tab: the app at the bottom of the app stack comes up (repeating visits them all)."""
        mapped_apps = [v for v in self.apps if v.mapped]
        if len(mapped_apps) > 1 or (mapped_apps and self.focused is not mapped_apps[0]):
            self.focus(mapped_apps[0])

    def close_focused(self) -> None:
        """Alt+F4: ask the focused app to close; its app shell gets SIGTERM if it has not in 3 s.
        The panel is never closed."""
        view = self.focused
        if view is None or view.is_panel or view.role.session_id is None:
            return
        self.close_session(view.role.session_id)

    def close_session(self, session_id: int) -> None:
        view = self._app_of(session_id)
        if view is not None:
            view.xdg.send_close()
        if session_id not in self._close_timers:
            timer = Timer(self._loop, lambda: self._close_overdue(session_id))
            self._close_timers[session_id] = timer
            timer.start(CLOSE_GRACE_S)

    def forget_session(self, session_id: int) -> None:
        """The session's appd is gone: its window leaves the scene and the stack now (a new session
        with the same id may come at once) and is asked to close; nothing is reported for it."""
        self._clear_session(session_id)
        view = self._app_of(session_id)
        if view is None:
            return
        for listener in view.listeners:
            listener.remove()
        self._nodes.pop(address(view.xdg._ptr), None)
        self.apps = [v for v in self.apps if v is not view]
        destroy_scene_node(view.node)
        view.xdg.send_close()
        if self.focused is view:
            self.focused = None
            self.focus(self._next_focus())

    def _close_overdue(self, session_id: int) -> None:
        self._close_timers.pop(session_id, None)
        if self._app_of(session_id) is not None:
            log.warning("session %d did not close its window within %.0f s: terminating its app shell",
                        session_id, CLOSE_GRACE_S)
        self._terminate_app_shell(session_id)

    def _app_of(self, session_id: int) -> View | None:
        return next((v for v in self.apps if v.role.session_id == session_id), None)

    # -- hit testing ------------------------------------------------------------------------
    def surface_at(self, lx: float, ly: float) -> tuple[View, Any, float, float] | None:
        """The topmost view and surface under a layout point, with surface-local coordinates."""
        for view in reversed(self.views()):
            if not view.mapped:
                continue
            rect = self.rect_for(view.role)
            geometry = view.xdg.get_geometry()
            surface, sx, sy = view.xdg.surface_at(lx - rect.x + geometry.x, ly - rect.y + geometry.y)
            if surface is not None:
                return view, surface, sx, sy
        return None
