"""Request → reply, the same for every transport (reference §4.4, with its defects fixed).

A caller is either a control client (the Unix socket, or a WebSocket with the boot token)
or bound to one session (a WebSocket with that session's token). A session-bound caller may
only exchange IPC with, and query the state of, its own session.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from weft.daemons.appd.app_source import LaunchRefused
from weft.daemons.appd.hub import Hub
from weft.daemons.appd.sessions import Busy, NotRunning, SessionManager
from weft.daemons.protocol import (
    AppState,
    Error,
    ErrorCode,
    FocusApp,
    InstalledApps,
    IpcForward,
    IpcMessage,
    IpcRecv,
    LaunchAck,
    LaunchApp,
    Message,
    NavigationGesture,
    PanelGesture,
    QueryAppState,
    QueryInstalledApps,
    QueryRunning,
    QuerySessionToken,
    RunningApps,
    SessionInfo,
    SessionState,
    SessionToken,
    TerminateApp,
)

log = logging.getLogger("weft.appd")

SESSION_REQUESTS = (IpcForward, IpcRecv, QueryAppState)


@dataclass(frozen=True)
class Caller:
    bound_session: int | None = None  # None: a control client


def _not_found(session_id: int) -> Error:
    return Error(code=ErrorCode.SESSION_NOT_FOUND, message=f"session {session_id} not found")


class Dispatcher:
    def __init__(self, manager: SessionManager, hub: Hub, max_sessions: int):
        self.manager = manager
        self.hub = hub
        self.max_sessions = max_sessions
        self.launching = 0  # LAUNCH_APP requests waiting for their package

    async def handle(self, request: Message, caller: Caller) -> Message:
        if caller.bound_session is not None and (
                not isinstance(request, SESSION_REQUESTS) or request.session_id != caller.bound_session):
            return Error(code=ErrorCode.NOT_PERMITTED,
                         message=f"this connection may only use session {caller.bound_session}")
        if isinstance(request, LaunchApp):
            return await self._launch(request)
        if isinstance(request, QueryRunning):
            return RunningApps(sessions=[SessionInfo(session_id=s.id, app_id=s.app_id)
                                         for s in self.manager.live_sessions()],
                               ended_with_error=[SessionInfo(session_id=s.id, app_id=s.app_id, error=s.error,
                                                             reason=s.end_reason.value if s.end_reason else None)
                                                 for s in self.manager.ended_with_error()] or None)
        if isinstance(request, QueryInstalledApps):
            return InstalledApps(apps=self.manager.source.installed())
        if isinstance(request, PanelGesture):
            gesture = NavigationGesture(**request.model_dump(exclude={"type"}))
            self.hub.publish(gesture)
            return gesture
        session = self.manager.get(request.session_id)  # type: ignore[attr-defined]
        if isinstance(request, QueryAppState):  # as in the reference: an unknown session is `not_found`
            return session.app_state() if session else AppState(session_id=request.session_id,
                                                                state=SessionState.NOT_FOUND)
        if session is None:
            return _not_found(request.session_id)  # type: ignore[attr-defined]
        if isinstance(request, TerminateApp):
            self.manager.terminate(session)
            return session.app_state()
        if isinstance(request, FocusApp):  # control clients only (not in SESSION_REQUESTS)
            if session.state != SessionState.RUNNING:
                return Error(code=ErrorCode.NOT_RUNNING, message=f"session {session.id} is {session.state.value}")
            self.manager.focus(session)
            return session.app_state()
        if isinstance(request, QuerySessionToken):
            if not session.live:
                return Error(code=ErrorCode.NOT_RUNNING, message=f"session {session.id} has stopped")
            return SessionToken(session_id=session.id, token=session.token)
        try:
            if isinstance(request, IpcForward):
                self.manager.forward(session, request.payload)
                return AppState(session_id=session.id, state=session.state)
            if isinstance(request, IpcRecv):
                payload = await self.manager.receive(session, request.timeout_ms / 1000)
                if payload is None:
                    return Error(code=ErrorCode.TIMEOUT, message=f"no message from session {session.id}")
                return IpcMessage(session_id=session.id, payload=payload)
        except NotRunning as exc:
            return Error(code=ErrorCode.NOT_RUNNING, message=str(exc))
        except Busy as exc:
            return Error(code=ErrorCode.BUSY, message=str(exc))
        raise AssertionError(f"unhandled request {request.type}")  # type: ignore[attr-defined]

    async def _launch(self, request: LaunchApp) -> Message:
        # Launches still acquiring their package count too: the cap must hold while they wait.
        if len(self.manager.live_sessions()) + self.launching >= self.max_sessions:
            return Error(code=ErrorCode.BUSY, message=f"{self.max_sessions} sessions are already running")
        self.launching += 1
        try:
            session = await self.manager.acquire_and_launch(request.app_id)
        except LaunchRefused as exc:
            log.warning("cannot launch %s: %s: %s", exc.app_id, exc.reason.value, exc)
            return Error(code=ErrorCode.LAUNCH_FAILED, message=str(exc), reason=exc.reason.value)
        finally:
            self.launching -= 1
        return LaunchAck(session_id=session.id, app_id=session.app_id)
