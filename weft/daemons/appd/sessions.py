"""Sessions: the registry and one supervisor task per session (broadcasts go through hub.py).

Lifecycle: starting → running (the runtime relayed READY) → stopping (terminate requested)
→ stopped. Every path ends in the supervisor's `finally`: the runtime gets SIGTERM, then
SIGKILL after the grace period, is reaped, its relay is closed, the state becomes stopped and
APP_STATE stopped is broadcast. A session whose runtime ended on its own with an error is
recorded with a reason and a message (APP_STATE, RUNNING_APPS.ended_with_error); for a verified
image appd first asks weft-mountd whether dm-verity saw corruption, which then is the error.
Any other exception in the supervisor is logged once with its traceback and ends the session
as failed, with the exception as the message.
The package (app_source.py) is released last.
With a desktop (compositor_link.py), a session that reached READY is announced to the
compositor, which opens its window; the teardown withdraws it first, and a window the user
closed terminates its session like TERMINATE_APP. Registry operations never wait while holding
anything, so there is no lock to deadlock on (the reference hung in IPC_FORWARD, §11.2).
"""
from __future__ import annotations

import asyncio
import logging
import signal

from weft.daemons.appd.app_source import AppSource, PackageRoot
from weft.daemons.appd.cgroups import CgroupError
from weft.daemons.appd.compositor_link import CompositorLink
from weft.daemons.appd.config import AppdConfig
from weft.daemons.appd.hub import Hub
from weft.daemons.appd.mailbox import Mailbox
from weft.daemons.appd.runtimes import RuntimePool, RuntimeProcess
from weft.daemons.appd.tokens import new_session_token, same_token
from weft.daemons.protocol import (
    AppReady,
    AppState,
    AppSurfaceCreated,
    EndReason,
    IpcMessage,
    LaunchAck,
    SessionState,
)
from weft.daemons.relay import Ipc, Launch, Ready, RelayError

log = logging.getLogger("weft.appd")

STOPPED_KEPT = 256  # stopped sessions remembered for QUERY_APP_STATE (the reference kept all)
MAX_RELAY_BACKLOG = 1 << 20
ENDED_WITH_ERROR_SHOWN = 16  # RUNNING_APPS lists at most this many recent failed sessions


class Session:
    def __init__(self, session_id: int, app_id: str, package: PackageRoot | None = None):
        self.id = session_id
        self.app_id = app_id
        self.package = package  # held from launch until the teardown releases it
        self.end_reason: EndReason | None = None
        self.error: str | None = None
        self.state = SessionState.STARTING
        self.token = new_session_token()
        self.runtime: RuntimeProcess | None = None
        self.mailbox = Mailbox()  # app→UI messages for IPC_RECV pullers, bounded in count and bytes
        self.mail = asyncio.Event()  # set while the mailbox has messages or the session has ended
        self.task: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        return self.state in (SessionState.STARTING, SessionState.RUNNING, SessionState.STOPPING)

    def fail(self, reason: EndReason, error: str) -> None:
        self.end_reason, self.error = reason, error

    def app_state(self) -> AppState:
        if self.state != SessionState.STOPPED:  # the reason may still change (a corruption check)
            return AppState(session_id=self.id, state=self.state)
        return AppState(session_id=self.id, state=self.state, error=self.error,
                        reason=self.end_reason.value if self.end_reason else None)


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"the app's runtime was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"the app's runtime was killed by signal {-code}"
    return f"the app's runtime exited with status {code}"


class NotRunning(Exception):
    pass


class Busy(Exception):
    pass


class SessionManager:
    def __init__(self, config: AppdConfig, pool: RuntimePool, hub: Hub, source: AppSource,
                 compositor: CompositorLink | None = None):
        self.config = config
        self.pool = pool
        self.hub = hub
        self.source = source
        self.compositor = compositor  # None: no desktop, sessions run headless
        self.sessions: dict[int, Session] = {}
        self.last_id = 0

    # -- queries --------------------------------------------------------------------------
    def get(self, session_id: int) -> Session | None:
        return self.sessions.get(session_id)

    def live_sessions(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.live]

    def by_token(self, token: str) -> Session | None:
        return next((s for s in self.sessions.values() if s.live and same_token(token, s.token)), None)

    def ended_with_error(self) -> list[Session]:
        failed = [s for s in self.sessions.values() if s.state == SessionState.STOPPED and s.error is not None]
        return failed[-ENDED_WITH_ERROR_SHOWN:]

    # -- lifecycle ------------------------------------------------------------------------
    async def acquire_and_launch(self, app_id: str) -> Session:
        """Acquire the app's package from the source (LaunchRefused says why not), then launch."""
        return self.launch(await self.source.acquire(app_id))

    def launch(self, package: PackageRoot) -> Session:
        app_id = package.app_id
        self.last_id += 1
        session = Session(self.last_id, app_id, package)
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

    def window_closed(self, session_id: int) -> None:
        """The compositor says the session's window is gone: end the session as TERMINATE_APP does."""
        session = self.get(session_id)
        if session is not None:
            self.terminate(session)

    def focus(self, session: Session) -> None:
        """Ask the compositor to raise the session's window (nothing without a desktop)."""
        if self.compositor is not None:
            self.compositor.focus(session.id)

    async def stop_all(self) -> None:
        tasks = [s.task for s in self.sessions.values() if s.task is not None and not s.task.done()]
        for session in self.live_sessions():
            self.terminate(session)
        await asyncio.gather(*tasks, return_exceptions=True)

    def _set_state(self, session: Session, state: SessionState) -> None:
        session.state = state
        self.hub.publish(session.app_state(), session.id)

    def _forget_old(self) -> None:
        stopped = [sid for sid, s in self.sessions.items() if s.state == SessionState.STOPPED]
        for sid in stopped[: max(0, len(stopped) - STOPPED_KEPT)]:
            del self.sessions[sid]

    async def _supervise(self, session: Session) -> None:
        try:
            session.runtime = await self.pool.take(session.id)  # in its cgroup before the launch message
            assert session.package is not None
            session.runtime.send(Launch(app_id=session.app_id, session_id=session.id,
                                        memory_mib=self.config.memory_mib, package_root=session.package.path,
                                        publisher=session.package.publisher,
                                        image_root_hash=session.package.image_root_hash))
            log.info("session %d: %s in runtime %d", session.id, session.app_id, session.runtime.pid)
            await asyncio.wait_for(self._until_ready(session), self.config.ready_timeout_s)
            await self._relay(session)
        except TimeoutError:
            log.error("session %d: no READY within %.0f s", session.id, self.config.ready_timeout_s)
            session.fail(EndReason.READY_TIMEOUT, f"no READY within {self.config.ready_timeout_s:g} s")
        except (RelayError, ValueError) as exc:
            log.error("session %d: relay failed: %s", session.id, exc)
            session.fail(EndReason.RELAY_FAILED, f"relay failed: {exc}")
        except (ConnectionError, OSError) as exc:  # the runtime's exit status tells more (teardown)
            log.error("session %d: relay failed: %s", session.id, exc)
            if session.runtime is None:
                session.fail(EndReason.FAILED, f"cannot start a runtime: {exc}")
        except CgroupError as exc:
            log.error("session %d: %s", session.id, exc)
            session.fail(EndReason.CGROUP_FAILED, str(exc))
        except asyncio.CancelledError:
            pass  # terminate or shutdown: fall through to the teardown
        except Exception as exc:  # a bug ends this session visibly, not appd and not silently
            log.exception("session %d (%s): supervisor failed", session.id, session.app_id)
            session.fail(EndReason.FAILED, f"appd failed while supervising the session: {type(exc).__name__}: {exc}")
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
                    self._open_window(session)
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

    def _open_window(self, session: Session) -> None:
        if self.compositor is not None and session.runtime is not None:
            self.compositor.surface_created(AppSurfaceCreated(app_id=session.app_id, session_id=session.id,
                                                              pid=session.runtime.pid, token=session.token))

    async def _teardown(self, session: Session) -> None:
        if self.compositor is not None:  # first: the window goes while the runtime is being stopped
            self.compositor.surface_destroyed(session.id)
        if session.runtime is not None:
            requested = session.state == SessionState.STOPPING
            code = await asyncio.shield(session.runtime.stop(self.config.stop_grace_s))
            log.info("session %d: runtime %d exited with %s", session.id, session.runtime.pid, code)
            if not requested and code != 0 and session.error is None:
                session.fail(EndReason.FAILED, _describe_exit(code))
        if session.package is not None:
            await asyncio.shield(self._release(session, session.package))
        self._set_state(session, SessionState.STOPPED)
        session.mail.set()  # wake IPC_RECV waiters: nothing more will come

    async def _release(self, session: Session, package: PackageRoot) -> None:
        """Ask about corruption while the image is still mounted, then drop the package."""
        if session.error is not None:
            corruption = await self.source.corruption(package)
            if corruption is not None:
                log.error("session %d: %s; the session is not restarted", session.id, corruption)
                session.fail(EndReason.CORRUPTED, corruption)
        await self.source.release(package)

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
