"""Sessions: the registry and one supervisor task per session (broadcasts go through hub.py).

Lifecycle: starting → running (the runtime relayed READY) → stopping (terminate requested)
→ stopped. Every path ends in the supervisor's `finally`: the runtime gets SIGTERM, then
SIGKILL after the grace period, is reaped, its relay is closed, the state becomes stopped and
APP_STATE stopped is broadcast. Registry operations never wait while holding anything, so
there is no lock to deadlock on (the reference hung in IPC_FORWARD, §11.2).
"""
from __future__ import annotations

import asyncio
import logging

from weft.daemons.appd.cgroups import CgroupError
from weft.daemons.appd.config import AppdConfig
from weft.daemons.appd.hub import Hub
from weft.daemons.appd.mailbox import Mailbox
from weft.daemons.appd.runtimes import RuntimePool, RuntimeProcess
from weft.daemons.appd.tokens import new_session_token, same_token
from weft.daemons.protocol import AppReady, AppState, IpcMessage, LaunchAck, SessionState
from weft.daemons.relay import Ipc, Launch, Ready, RelayError

log = logging.getLogger("weft.appd")

STOPPED_KEPT = 256  # stopped sessions remembered for QUERY_APP_STATE (the reference kept all)
MAX_RELAY_BACKLOG = 1 << 20


class Session:
    def __init__(self, session_id: int, app_id: str):
        self.id = session_id
        self.app_id = app_id
        self.state = SessionState.STARTING
        self.token = new_session_token()
        self.runtime: RuntimeProcess | None = None
        self.mailbox = Mailbox()  # app→UI messages for IPC_RECV pullers, bounded in count and bytes
        self.mail = asyncio.Event()  # set while the mailbox has messages or the session has ended
        self.task: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        return self.state in (SessionState.STARTING, SessionState.RUNNING, SessionState.STOPPING)


class NotRunning(Exception):
    pass


class Busy(Exception):
    pass


class SessionManager:
    def __init__(self, config: AppdConfig, pool: RuntimePool, hub: Hub):
        self.config = config
        self.pool = pool
        self.hub = hub
        self.sessions: dict[int, Session] = {}
        self.last_id = 0

    # -- queries --------------------------------------------------------------------------
    def get(self, session_id: int) -> Session | None:
        return self.sessions.get(session_id)

    def live_sessions(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.live]

    def by_token(self, token: str) -> Session | None:
        return next((s for s in self.sessions.values() if s.live and same_token(token, s.token)), None)

    # -- lifecycle ------------------------------------------------------------------------
    def launch(self, app_id: str) -> Session:
        self.last_id += 1
        session = Session(self.last_id, app_id)
        self.sessions[session.id] = session
        self.hub.publish(LaunchAck(session_id=session.id, app_id=app_id), session.id)
        session.task = asyncio.create_task(self._supervise(session), name=f"session-{session.id}")
        self._forget_old()
        return session

    def terminate(self, session: Session) -> None:
        if session.state in (SessionState.STARTING, SessionState.RUNNING):
            self._set_state(session, SessionState.STOPPING)
            if session.task is not None:
                session.task.cancel()  # the supervisor's `finally` does the teardown

    async def stop_all(self) -> None:
        tasks = [s.task for s in self.sessions.values() if s.task is not None and not s.task.done()]
        for session in self.live_sessions():
            self.terminate(session)
        await asyncio.gather(*tasks, return_exceptions=True)

    def _set_state(self, session: Session, state: SessionState) -> None:
        session.state = state
        self.hub.publish(AppState(session_id=session.id, state=state), session.id)

    def _forget_old(self) -> None:
        stopped = [sid for sid, s in self.sessions.items() if s.state == SessionState.STOPPED]
        for sid in stopped[: max(0, len(stopped) - STOPPED_KEPT)]:
            del self.sessions[sid]

    async def _supervise(self, session: Session) -> None:
        try:
            session.runtime = await self.pool.take(session.id)  # in its cgroup before the launch message
            session.runtime.send(Launch(app_id=session.app_id, session_id=session.id,
                                        memory_mib=self.config.memory_mib))
            log.info("session %d: %s in runtime %d", session.id, session.app_id, session.runtime.pid)
            await asyncio.wait_for(self._until_ready(session), self.config.ready_timeout_s)
            await self._relay(session)
        except TimeoutError:
            log.error("session %d: no READY within %.0f s", session.id, self.config.ready_timeout_s)
        except (RelayError, ValueError, ConnectionError, OSError) as exc:
            log.error("session %d: relay failed: %s", session.id, exc)
        except CgroupError as exc:
            log.error("session %d: %s", session.id, exc)
        except asyncio.CancelledError:
            pass  # terminate or shutdown: fall through to the teardown
        finally:
            await self._teardown(session)

    async def _until_ready(self, session: Session) -> None:
        assert session.runtime is not None
        while True:
            message = await session.runtime.next_message()
            if message is None:
                raise ConnectionError("runtime exited before READY")
            if isinstance(message, Ready):
                if session.state == SessionState.STARTING:
                    session.state = SessionState.RUNNING
                    self.hub.publish(AppReady(session_id=session.id, app_id=session.app_id), session.id)
                return
            self._deliver(session, message.payload)

    async def _relay(self, session: Session) -> None:
        assert session.runtime is not None
        while (message := await session.runtime.next_message()) is not None:
            if isinstance(message, Ipc):
                self._deliver(session, message.payload)

    def _deliver(self, session: Session, payload: str) -> None:
        self.hub.publish(IpcMessage(session_id=session.id, payload=payload), session.id)
        session.mailbox.put(payload)
        session.mail.set()

    async def _teardown(self, session: Session) -> None:
        if session.runtime is not None:
            code = await asyncio.shield(session.runtime.stop(self.config.stop_grace_s))
            log.info("session %d: runtime %d exited with %s", session.id, session.runtime.pid, code)
        self._set_state(session, SessionState.STOPPED)
        session.mail.set()  # wake IPC_RECV waiters: nothing more will come

    # -- IPC ------------------------------------------------------------------------------
    def forward(self, session: Session, payload: str) -> None:
        runtime = session.runtime
        if session.state not in (SessionState.STARTING, SessionState.RUNNING) or runtime is None:
            raise NotRunning(f"session {session.id} is {session.state.value}")
        if runtime.backlog() > MAX_RELAY_BACKLOG:
            raise Busy(f"session {session.id} is not reading its messages")
        runtime.send(Ipc(payload=payload))

    async def receive(self, session: Session, timeout_s: float) -> str | None:
        """The oldest undelivered app→UI message; None on timeout. Raises NotRunning when the
        session has ended and nothing is left."""
        try:
            await asyncio.wait_for(session.mail.wait(), timeout_s)
        except TimeoutError:
            return None
        if session.mailbox:
            message = session.mailbox.take()
            if not session.mailbox and session.live:
                session.mail.clear()
            return message
        raise NotRunning(f"session {session.id} is {session.state.value}")
