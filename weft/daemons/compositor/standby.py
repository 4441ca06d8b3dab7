"""The standby app shell: one app shell started before any session needs it.

A cold launch spent most of its time starting the app shell's Python, GTK and WebKit
(docs/desktop.md). The compositor therefore keeps one `CMD --standby` running: it has paid
that cost, holds its display connection open, and waits for `<app_id> <session_id> <token>`
on stdin. A launch hands it that line instead of starting a process, and a new standby is
started once the launched window is mapped, so that it never competes with the launch.

A standby has no role: roles are pids the compositor handed a session, and it has none until
it takes one, so whatever it shows before that is refused like a stranger's window.
"""
from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence

from pywayland.server import EventLoop

from weft.daemons.compositor.children import hand_line, spawn
from weft.daemons.compositor.loop import Timer

log = logging.getLogger("weft.compositor")

AFTER_PANEL_S = 10.0  # boot: the shell's page is drawn first (it takes seconds under TCG)
AFTER_TAKE_S = 5.0  # a launch whose window never maps still gets its standby replaced
AFTER_MAPPED_S = 0.5  # the launched window is up: the replacement may start
AFTER_FAILURE_S = 5.0
MAX_FAILURES = 3  # standbys that died unused in a row: stop keeping one (launches start cold)


class StandbyAppShell:
    def __init__(self, loop: EventLoop, argv: Sequence[str], env: Callable[[], Mapping[str, str]]) -> None:
        self.argv = [*argv, "--standby"]
        self._env = env
        self.process: subprocess.Popen[bytes] | None = None
        self._failures = 0
        self._timer = Timer(loop, self._start)

    @property
    def enabled(self) -> bool:
        return self._failures < MAX_FAILURES

    def start_in(self, seconds: float) -> None:
        """(Re)arm the start of a standby in `seconds`, unless one runs or standbys gave up."""
        if self.process is None and self.enabled:
            self._timer.start(seconds)

    def _start(self) -> None:  # armed only by start_in, which checks that none runs and standbys are on
        try:
            self.process = spawn(self.argv, self._env(), stdin_pipe=True)
        except OSError as exc:
            log.error("cannot start a standby app shell %s: %s", self.argv[0], exc.strerror or exc)
            self._failed()
            return
        log.info("standby app shell started: %s (pid %d)", shlex.join(self.argv), self.process.pid)

    def take(self, app_id: str, session_id: int, token: str) -> subprocess.Popen[bytes] | None:
        """The standby, handed this session; None when there is none alive (start one cold)."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is not None or not hand_line(process, f"{app_id} {session_id} {token}"):
            self._report_death(process)
            return None
        self._failures = 0
        self.start_in(AFTER_TAKE_S)
        return process

    def reap(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            process, self.process = self.process, None
            self._report_death(process)

    def _report_death(self, process: subprocess.Popen[bytes]) -> None:
        process.wait()
        log.warning("the standby app shell (pid %d) exited with status %d before a session took it",
                    process.pid, process.returncode)
        self._failed()

    def _failed(self) -> None:
        self._failures += 1
        if not self.enabled:
            log.error("%d standby app shells in a row died unused: keeping none any more; app shells "
                      "start when their session does", self._failures)
            return
        self.start_in(AFTER_FAILURE_S)

    def stop(self) -> None:
        self._timer.cancel()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
