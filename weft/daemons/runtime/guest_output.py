"""Guest stdout/stderr into the runtime's log: one line per record, rate-limited per session.

A guest printing in a loop must not flood the journal (journald would then rate-limit the
whole unit, appd's own messages included). Both streams of a session draw from one token
bucket: LINE_BURST lines at once, LINES_PER_S after that; a line costs one token per started
KiB. Lines over the budget are dropped and counted, and the count is logged as one
`suppressed N lines` record before the next line that fits, and at the end of the session.
Control characters are escaped (`weft.terminal`): the log is read on terminals.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from weft.terminal import terminal_safe

guest_log = logging.getLogger("weft.guest")

LINE_BURST = 200
LINES_PER_S = 20.0
MAX_LINE_BYTES = 4096  # longer output (or none with a newline) is logged in pieces of this size
TOKEN_BYTES = 1024


class LineBudget:
    """The token bucket one session's stdout and stderr share."""

    def __init__(self, session_id: int, clock: Callable[[], float] = time.monotonic):
        self.session_id = session_id
        self.clock = clock
        self.tokens = float(LINE_BURST)
        self.refilled_at = clock()
        self.suppressed = 0

    def admit(self, line: bytes) -> bool:
        now = self.clock()
        self.tokens = min(float(LINE_BURST), self.tokens + (now - self.refilled_at) * LINES_PER_S)
        self.refilled_at = now
        cost = 1 + max(len(line) - 1, 0) // TOKEN_BYTES
        if self.tokens < cost:
            self.suppressed += 1
            return False
        self.tokens -= cost
        self.report_suppressed()
        return True

    def report_suppressed(self) -> None:
        if self.suppressed:
            guest_log.warning("session %d: suppressed %d lines of guest output (more than %d at once or %g/s)",
                              self.session_id, self.suppressed, LINE_BURST, LINES_PER_S)
            self.suppressed = 0


class GuestOutput:
    """One guest stream, split into lines and logged with the session id."""

    def __init__(self, session_id: int, stream: str, budget: LineBudget):
        self.prefix = f"session {session_id} {stream}"
        self.budget = budget
        self.pending = b""

    def write(self, data: bytes) -> None:
        *lines, rest = (self.pending + data).split(b"\n")
        if len(rest) > MAX_LINE_BYTES:  # output without newlines is still logged, in whole pieces
            cut = len(rest) - len(rest) % MAX_LINE_BYTES
            lines.append(rest[:cut])
            rest = rest[cut:]
        self.pending = rest
        for line in lines:
            for start in range(0, max(len(line), 1), MAX_LINE_BYTES):
                self._log(line[start:start + MAX_LINE_BYTES])

    def _log(self, line: bytes) -> None:
        if self.budget.admit(line):
            guest_log.info("%s: %s", self.prefix, terminal_safe(line.decode(errors="replace")))

    def flush(self) -> None:
        """At the end of the session: what is left without a newline, then the suppressed count."""
        if self.pending:
            self._log(self.pending)
            self.pending = b""
        self.budget.report_suppressed()
