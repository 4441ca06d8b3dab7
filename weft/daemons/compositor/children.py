"""The processes the compositor starts: the system shell (restarted with back-off) and one app
shell per session. It starts them, so it knows their pids: those pids are the roles."""
from __future__ import annotations

import collections
import ctypes
import logging
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pywayland.server import EventLoop

from weft.daemons.compositor.loop import Timer

if TYPE_CHECKING:
    from weft.daemons.compositor.standby import StandbyAppShell

log = logging.getLogger("weft.compositor")

PR_SET_PDEATHSIG = 1
SHELL_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
SHELL_MAX_DEATHS = 5  # within SHELL_DEATH_WINDOW_S: the compositor gives up (systemd restarts it all)
SHELL_DEATH_WINDOW_S = 60.0
KILL_AFTER_S = 3.0
# What a child must not inherit: systemd's notify socket and activation fds, the backends'
# configuration, and an X display it would pick over ours.
_DROPPED_ENV = ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "DISPLAY", "WAYLAND_SOCKET")


def _in_child() -> None:
    # The compositor blocks SIGCHLD/SIGTERM for its signalfd: a blocked mask survives exec, and
    # GLib (WebKit) waits for its own children through SIGCHLD.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)  # the compositor gone → the child goes too


def child_environment(base: Mapping[str, str], wayland_display: str) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in _DROPPED_ENV and not k.startswith("WLR_")}
    env["WAYLAND_DISPLAY"] = wayland_display
    env["GDK_BACKEND"] = "wayland"
    return env


def spawn(argv: Sequence[str], env: Mapping[str, str], *, stdin_pipe: bool = False) -> subprocess.Popen[bytes]:
    """Start a child; with `stdin_pipe` its stdin is a pipe that `hand_line` writes to once."""
    log.debug("+ %s", shlex.join(argv))
    return subprocess.Popen(list(argv), env=dict(env), stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                            preexec_fn=_in_child, close_fds=True)


def hand_line(process: subprocess.Popen[bytes], line: str) -> bool:
    """Write one line to the child's stdin pipe and close it; False if the child is gone."""
    assert process.stdin is not None
    try:
        process.stdin.write(line.encode() + b"\n")
        process.stdin.close()
    except OSError as exc:  # it died: its exit is reaped like any other
        log.warning("cannot write to pid %d: %s", process.pid, exc.strerror or exc)
        return False
    return True


class ShellSupervisor:
    """Keeps the system shell running: restart after 1, 2, 4 … 30 s; SHELL_MAX_DEATHS deaths
    within a minute → `give_up()` (the compositor exits non-zero)."""

    def __init__(self, loop: EventLoop, argv: Sequence[str], env: Callable[[], Mapping[str, str]],
                 give_up: Callable[[str], None]) -> None:
        self.argv = list(argv)
        self._env = env
        self._give_up = give_up
        self.process: subprocess.Popen[bytes] | None = None
        self._deaths: collections.deque[float] = collections.deque()
        self._restart = Timer(loop, self.start)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        try:
            self.process = spawn(self.argv, self._env())
        except OSError as exc:
            log.error("cannot start the shell %s: %s", self.argv[0], exc.strerror or exc)
            self._died()
            return
        log.info("shell started: %s (pid %d)", shlex.join(self.argv), self.process.pid)

    def reap(self) -> None:
        if self.process is None or self.process.poll() is None:
            return
        log.warning("the shell (pid %d) exited with status %d", self.process.pid, self.process.returncode)
        self.process = None
        self._died()

    def _died(self) -> None:
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > SHELL_DEATH_WINDOW_S:
            self._deaths.popleft()
        if len(self._deaths) >= SHELL_MAX_DEATHS:
            self._give_up(f"the shell died {len(self._deaths)} times within {SHELL_DEATH_WINDOW_S:.0f} s")
            return
        delay = SHELL_BACKOFF_S[min(len(self._deaths), len(SHELL_BACKOFF_S)) - 1]
        log.info("restarting the shell in %.0f s", delay)
        self._restart.start(delay)

    def stop(self) -> None:
        self._restart.cancel()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()


@dataclass
class AppShell:
    session_id: int
    app_id: str
    process: subprocess.Popen[bytes]
    kill_timer: Timer | None = field(default=None)

    def terminate(self, loop: EventLoop) -> None:
        """SIGTERM now, SIGKILL if it is still there after KILL_AFTER_S."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        if self.kill_timer is None:
            self.kill_timer = Timer(loop, self._kill)
        self.kill_timer.start(KILL_AFTER_S)

    def _kill(self) -> None:
        if self.process.poll() is None:
            log.warning("app shell of session %d ignored SIGTERM: killing it", self.session_id)
            self.process.kill()


class AppShells:
    """One app shell process per session: `CMD <app_id> <session_id>`, the token on stdin; or,
    with a `standby`, the app shell started ahead, handed `<app_id> <session_id> <token>`."""

    def __init__(self, loop: EventLoop, argv: Sequence[str], env: Callable[[], Mapping[str, str]],
                 exited: Callable[[int], None], standby: StandbyAppShell | None = None) -> None:
        self.argv = list(argv)
        self._loop = loop
        self._env = env
        self._exited = exited
        self.standby = standby
        self.by_session: dict[int, AppShell] = {}
        self._retired: list[AppShell] = []  # of a lost appd connection: terminated, reaped silently

    def session_of_pid(self, pid: int) -> int | None:
        for shell in self.by_session.values():
            if shell.process.pid == pid:
                return shell.session_id
        return None

    def start(self, app_id: str, session_id: int, token: str) -> None:
        current = self.by_session.get(session_id)
        if current is not None and current.process.poll() is None:
            log.debug("session %d already has its app shell (pid %d)", session_id, current.process.pid)
            return
        if not self.argv:
            log.warning("no --app-shell given: session %d of %s gets no window", session_id, app_id)
            return
        process = self.standby.take(app_id, session_id, token) if self.standby is not None else None
        if process is not None:
            self.by_session[session_id] = AppShell(session_id, app_id, process)
            log.info("app shell for session %d (%s): the standby one, pid %d", session_id, app_id, process.pid)
            return
        try:
            process = spawn([*self.argv, app_id, str(session_id)], self._env(), stdin_pipe=True)
        except OSError as exc:
            log.error("cannot start the app shell %s: %s", self.argv[0], exc.strerror or exc)
            self._exited(session_id)
            return
        hand_line(process, token)
        self.by_session[session_id] = AppShell(session_id, app_id, process)
        log.info("app shell for session %d (%s) started, pid %d", session_id, app_id, process.pid)

    def terminate(self, session_id: int) -> None:
        shell = self.by_session.get(session_id)
        if shell is not None:
            shell.terminate(self._loop)

    def retire(self, session_id: int) -> None:
        """The session's appd is gone: its app shell loses its role at once (the next appd numbers
        sessions from 1 again) and gets SIGTERM, SIGKILL after KILL_AFTER_S; its exit is not reported."""
        shell = self.by_session.pop(session_id, None)
        if shell is None:
            return
        log.info("app shell of session %d (pid %d): its appd connection is gone, terminating it",
                 session_id, shell.process.pid)
        shell.terminate(self._loop)
        self._retired.append(shell)

    def reap(self) -> None:
        if self.standby is not None:
            self.standby.reap()
        for shell in [s for s in self._retired if s.process.poll() is not None]:
            self._retired.remove(shell)
            if shell.kill_timer is not None:
                shell.kill_timer.remove()
            log.info("retired app shell (pid %d) exited with status %d", shell.process.pid, shell.process.returncode)
        for session_id, shell in list(self.by_session.items()):
            if shell.process.poll() is None:
                continue
            del self.by_session[session_id]
            if shell.kill_timer is not None:
                shell.kill_timer.remove()
            log.info("app shell of session %d exited with status %d", session_id, shell.process.returncode)
            self._exited(session_id)

    def stop_all(self) -> None:
        if self.standby is not None:
            self.standby.stop()
        for shell in [*self.by_session.values(), *self._retired]:
            if shell.process.poll() is None:
                shell.process.terminate()

