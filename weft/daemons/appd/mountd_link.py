"""appd's one connection to weft-mountd (docs/mountd.md), asynchronous, with the references it holds.

weft-mountd counts references per connection and drops all of a connection's references when
it closes, so appd keeps exactly one connection and counts, per app, the references its
sessions want and those the current connection holds. A reader task takes every reply off
the socket (replies come back in request order), so a lost connection is noticed at once,
not at the next request: pending requests fail, and a background task reconnects and takes
every wanted reference again (MOUNT_APP once per reference).
Requests made while the helper is away fail with `mountd_unavailable`; nothing is retried
somewhere else.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from pathlib import Path
from typing import TypeVar

from weft.daemons.protocol import (
    AppMounted,
    AppStatus,
    AppUnmounted,
    CheckApp,
    LaunchReason,
    Message,
    MountApp,
    MountError,
    Mounts,
    ProtocolError,
    UnmountApp,
    decode_body,
    encode_frame,
    parse_mountd_reply,
    read_frame,
)
from weft.errors import WeftError

log = logging.getLogger("weft.appd")
R = TypeVar("R", bound=Message)
Request = MountApp | UnmountApp | CheckApp
Reply = AppMounted | AppUnmounted | Mounts | AppStatus | MountError
RECONNECT_DELAYS_S = (0.1, 0.5, 1.0, 2.0, 5.0)  # then every 5 s while references are held


class MountdRefusal(WeftError):
    """weft-mountd (or the way to it) said no: a stable LaunchReason value and a message."""

    def __init__(self, reason: LaunchReason, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: Path) -> None:
        self.writer = writer
        self.path = path
        self.pending: collections.deque[asyncio.Future[Reply]] = collections.deque()
        self.lost = asyncio.Event()
        self.reader_task = asyncio.create_task(self._read_replies(reader), name="mountd-replies")

    @property
    def alive(self) -> bool:
        return not self.lost.is_set()

    async def call(self, request: Request) -> Reply:
        if not self.alive:
            raise MountdRefusal(LaunchReason.MOUNTD_UNAVAILABLE, f"the connection to weft-mountd at {self.path} "
                                                                 "was lost")
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.pending.append(future)
        try:
            self.writer.write(encode_frame(request))
            await self.writer.drain()
        except (OSError, ConnectionError):
            pass  # the reader task sees the end of the connection and fails `future`
        return await future

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        why = "weft-mountd closed the connection"
        try:
            while (body := await read_frame(reader)) is not None:
                reply = parse_mountd_reply(decode_body(body))
                if not self.pending:
                    why = f"weft-mountd sent {reply.type} unasked"
                    break
                future = self.pending.popleft()
                if not future.done():
                    future.set_result(reply)
        except (ProtocolError, OSError, ConnectionError) as exc:
            why = f"bad reply from weft-mountd: {exc}"
        finally:
            self.close(why)

    def close(self, why: str) -> None:
        if self.lost.is_set():
            return
        self.lost.set()
        self.writer.close()
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(MountdRefusal(LaunchReason.MOUNTD_UNAVAILABLE, f"{why} ({self.path})"))


class MountdLink:
    def __init__(self, path: Path, timeout_s: float = 30.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.wanted: collections.Counter[str] = collections.Counter()  # one per session holding a mount
        self.held: collections.Counter[str] = collections.Counter()  # references the current connection holds
        self._conn: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None
        self._closed = False

    async def mount(self, app_id: str) -> AppMounted:
        """MOUNT_APP: takes one reference (kept until `unmount`, or until appd exits)."""
        conn = await self._connected()
        reply = await self._call(conn, MountApp(app_id=app_id), AppMounted)
        if not conn.alive:  # lost right after the reply: mountd dropped that reference with it
            raise MountdRefusal(LaunchReason.MOUNTD_UNAVAILABLE, f"the connection to weft-mountd at {self.path} "
                                                                 "was lost during MOUNT_APP")
        self.wanted[app_id] += 1
        self.held[app_id] += 1
        return reply

    async def unmount(self, app_id: str) -> None:
        """UNMOUNT_APP: drops one reference, if the current connection holds one."""
        self.wanted[app_id] = max(0, self.wanted[app_id] - 1)
        conn = self._conn
        if conn is None or not conn.alive or self.held[app_id] <= 0:
            return  # lost with a connection (and not taken back): mountd already dropped it
        self.held[app_id] -= 1
        await self._call(conn, UnmountApp(app_id=app_id), AppUnmounted)

    async def is_corrupted(self, app_id: str) -> bool:
        return (await self._call(await self._connected(), CheckApp(app_id=app_id), AppStatus)).corrupted

    async def close(self) -> None:
        """Closing drops every reference this appd holds (mountd's rule)."""
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._conn is not None:
            self._conn.close("appd is stopping")
            with contextlib.suppress(asyncio.CancelledError):
                await self._conn.reader_task

    async def _call(self, conn: _Connection, request: Request, expected: type[R]) -> R:
        try:
            reply = await asyncio.wait_for(conn.call(request), self.timeout_s)
        except TimeoutError:
            # A stuck helper: drop the connection (mountd then drops our references; the watch
            # task takes them back once it answers again).
            why = f"weft-mountd at {self.path} did not answer {request.type} within {self.timeout_s:g} s"
            conn.close(why)
            raise MountdRefusal(LaunchReason.MOUNTD_UNAVAILABLE, why) from None
        if isinstance(reply, MountError):
            raise MountdRefusal(LaunchReason(reply.reason.value), reply.message)
        if not isinstance(reply, expected):
            raise MountdRefusal(LaunchReason.MOUNT_FAILED, f"weft-mountd answered {reply.type} to {request.type}")
        return reply

    async def _connected(self) -> _Connection:
        async with self._connecting:
            if self._conn is not None and self._conn.alive:
                return self._conn
            if self._closed:
                raise MountdRefusal(LaunchReason.MOUNTD_UNAVAILABLE, "appd is stopping")
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.path))
            except OSError as exc:
                raise MountdRefusal(LaunchReason.MOUNTD_UNAVAILABLE,
                                    f"cannot connect to weft-mountd at {self.path}: {exc.strerror or exc}") from None
            conn = self._conn = _Connection(reader, writer, self.path)
            self.held = collections.Counter()  # a new connection holds nothing yet
            await self._take_back(conn)
            if self._watch is None or self._watch.done():
                self._watch = asyncio.create_task(self._watch_connection(), name="mountd-watch")
            return conn

    async def _take_back(self, conn: _Connection) -> None:
        """On a new connection, take again each reference the live sessions want. `wanted` may
        shrink meanwhile (a session ends): it is read afresh before each MOUNT_APP."""
        for app_id in list(self.wanted):
            while self.held[app_id] < self.wanted[app_id] and conn.alive:
                try:
                    reply = await asyncio.wait_for(conn.call(MountApp(app_id=app_id)), self.timeout_s)
                except (MountdRefusal, TimeoutError) as exc:
                    reply = None
                    why = str(exc) or "timed out"
                else:
                    why = reply.message if isinstance(reply, MountError) else ""
                if not isinstance(reply, AppMounted):
                    log.error("weft-mountd: cannot take back a reference to %s for a running session: %s",
                              app_id, why or f"unexpected {type(reply).__name__}")
                    break  # the next reconnect tries again
                self.held[app_id] += 1
        if +self.wanted:
            log.info("weft-mountd: connected; holding %d of %d references", sum(self.held.values()),
                     sum(self.wanted.values()))

    async def _watch_connection(self) -> None:
        """While references are held, a lost connection is re-established (with back-off)."""
        attempt = 0
        while not self._closed:
            conn = self._conn
            if conn is not None and conn.alive:
                attempt = 0
                await conn.lost.wait()
                if self._closed:
                    return
                log.warning("lost the connection to weft-mountd at %s", self.path)
                continue
            if not +self.wanted:
                return  # nothing to take back: the next request connects
            await asyncio.sleep(RECONNECT_DELAYS_S[min(attempt, len(RECONNECT_DELAYS_S) - 1)])
            attempt += 1
            try:
                await self._connected()
            except MountdRefusal as exc:
                log.warning("%s; retrying", exc)
