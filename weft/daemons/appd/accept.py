"""appd's accept loops: one connection at a time, and a calm back-off when descriptors run out.

asyncio's own accept loop, on EMFILE, logs a traceback and schedules a retry for every
connection still queued, each retry doing the same (issue 7, defect 6: tens of thousands of
tracebacks and a stalled event loop). Here an accept that fails for lack of resources is
reported at most once per LOG_INTERVAL_S, without a traceback, and the loop waits
ACCEPT_BACKOFF_S before trying again. The servers also bound how many connections they keep,
so with the unit's LimitNOFILE this should not happen at all.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("weft.appd")

ACCEPT_BACKOFF_S = 0.5
LOG_INTERVAL_S = 10.0
LISTEN_BACKLOG = 128
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class RateLimitedWarning:
    """A warning logged at most once per `interval_s`; the next report says how many were skipped."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S):
        self.interval_s = interval_s
        self.next_at = 0.0
        self.skipped = 0

    def warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self.next_at:
            self.skipped += 1
            return
        if self.skipped:
            message += f" ({self.skipped} similar since the last report)"
        log.warning(message, *args)
        self.next_at = now + self.interval_s
        self.skipped = 0


async def accept_forever(listener: socket.socket, attach: Callable[[socket.socket], Awaitable[None]],
                         what: str) -> None:
    """Accept connections on the non-blocking `listener` and hand each to `attach` until cancelled."""
    loop = asyncio.get_running_loop()
    failures = RateLimitedWarning()
    while True:
        try:
            conn, _address = await loop.sock_accept(listener)
        except (ConnectionAbortedError, InterruptedError):
            continue  # the peer gave up while queued
        except OSError as exc:
            if exc.errno in OUT_OF_RESOURCES:
                failures.warn("%s: cannot accept connections: %s; retrying every %.1f s", what,
                              exc.strerror, ACCEPT_BACKOFF_S)
            else:
                failures.warn("%s: accept failed: %s", what, exc.strerror or exc)
            await asyncio.sleep(ACCEPT_BACKOFF_S)
            continue
        conn.setblocking(False)
        try:
            await attach(conn)
        except OSError as exc:  # e.g. EMFILE creating the transport: drop this one connection
            failures.warn("%s: dropping a connection: %s", what, exc.strerror or exc)
            conn.close()
