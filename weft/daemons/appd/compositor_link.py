"""appd's one connection to weft-compositor's IPC socket (docs/desktop.md, "appd ⇄ compositor").

appd tells the compositor which sessions have a window (`app_surface_created` after READY,
`app_surface_destroyed` when the session ends, `app_focus_request` for FOCUS_APP) and hears
back `surface_ready` (logged) and `window_closed` (the session is terminated).

Nothing here ever makes a launch wait (the reference's queue of 32 blocked the supervisor once
the compositor was away, and every later launch hung in `starting`): sending only appends to
a bounded queue. While the compositor is away a message is dropped (logged once per absence);
a compositor that stops reading (MAX_QUEUED messages waiting) loses its connection. The link
reconnects with back-off (0.5 s → 5 s) and, on every new connection, announces each session
that has a window, so windows come back after a compositor restart: the connection is the
scope of the compositor's app windows. A frame that is not a valid message drops the
connection (logged, no traceback); a message of an unknown type is skipped.
The peer must run as appd's user: the token in `app_surface_created` opens the session's
WebSocket, and is never handed to a socket someone else bound.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from weft.daemons.peercred import peer_credentials
from weft.daemons.protocol import (
    AppFocusRequest,
    AppSurfaceCreated,
    AppSurfaceDestroyed,
    FromCompositor,
    ProtocolError,
    SurfaceReady,
    ToCompositor,
    UnknownMessageType,
    WindowClosed,
    decode_body,
    encode_frame,
    parse_from_compositor,
    read_compositor_frame,
)

log = logging.getLogger("weft.appd")

RECONNECT_DELAYS_S = (0.5, 1.0, 2.0, 4.0, 5.0)  # then every 5 s
STABLE_S = 5.0  # a connection that lasted this long resets the back-off
MAX_QUEUED = 256  # messages waiting for a connected compositor, beyond the announcements: it is not reading
FLUSH_AT_CLOSE_S = 1.0  # appd stopping: how long the last app_surface_destroyed may take to leave


class CompositorLink:
    def __init__(self, path: Path) -> None:
        self.path = path
        # Sessions with a window, in launch order: announced again on every new connection.
        self.surfaces: dict[int, AppSurfaceCreated] = {}
        self._queue: collections.deque[ToCompositor] = collections.deque()
        self._queued = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None  # set while connected
        self._lost_why: str | None = None  # set when appd itself drops the connection
        self._dropped = 0  # messages dropped during the current absence
        self._unknown_types: set[str] = set()  # logged once each
        self._on_window_closed: Callable[[int], None] = lambda session_id: None
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def connected(self) -> bool:
        return self._writer is not None

    def start(self, on_window_closed: Callable[[int], None]) -> None:
        """Connect in the background; `on_window_closed(session_id)` runs for each window_closed."""
        self._on_window_closed = on_window_closed
        self._task = asyncio.create_task(self._run(), name="compositor-link")

    # -- what sessions tell the compositor (never waits) -----------------------------------
    def surface_created(self, announcement: AppSurfaceCreated) -> None:
        self.surfaces[announcement.session_id] = announcement
        self._send(announcement)

    def surface_destroyed(self, session_id: int) -> None:
        if self.surfaces.pop(session_id, None) is not None:
            self._send(AppSurfaceDestroyed(session_id=session_id))

    def focus(self, session_id: int) -> None:
        self._send(AppFocusRequest(session_id=session_id))

    def _send(self, message: ToCompositor) -> None:
        writer = self._writer
        if writer is None:
            self._dropped += 1
            if self._dropped == 1:
                log.warning("weft-compositor at %s is not connected: %s for session %d not sent (sessions with a "
                            "window are announced again once it is back)", self.path, message.type,
                            message.session_id)
            return
        if len(self._queue) >= MAX_QUEUED + len(self.surfaces):  # the announcements may be queued too
            self._drop_connection(writer, f"it has not read {len(self._queue)} messages")
            return
        self._queue.append(message)
        self._queued.set()

    # -- the connection -------------------------------------------------------------------
    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            if attempt:
                await asyncio.sleep(RECONNECT_DELAYS_S[min(attempt - 1, len(RECONNECT_DELAYS_S) - 1)])
            attempt += 1
            try:
                reader, writer = await asyncio.open_unix_connection(str(self.path))
            except OSError as exc:
                if attempt == 1:
                    log.warning("cannot connect to weft-compositor at %s: %s; retrying", self.path,
                                exc.strerror or exc)
                continue
            peer_uid = peer_credentials(writer.get_extra_info("socket")).uid
            if peer_uid != os.getuid():
                log.error("weft-compositor socket %s belongs to a process of uid %d, not %d; not using it",
                          self.path, peer_uid, os.getuid())
                writer.close()
                continue
            started = time.monotonic()
            why = await self._serve(reader, writer)
            if time.monotonic() - started >= STABLE_S:
                attempt = 1  # the next try waits the shortest delay
            if not self._closing:
                log.warning("lost the connection to weft-compositor at %s: %s; reconnecting", self.path, why)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        """One connection: announce every window, then write the queue and read events until it ends."""
        if self._dropped:
            log.info("weft-compositor: %d messages were dropped while it was away", self._dropped)
        log.info("connected to weft-compositor at %s; announcing %d windows", self.path, len(self.surfaces))
        self._queue = collections.deque(self.surfaces.values())
        self._queued.set()
        self._writer, self._lost_why, self._dropped = writer, None, 0
        tasks = {asyncio.create_task(self._read(reader), name="compositor-read"),
                 asyncio.create_task(self._write(writer), name="compositor-write")}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._writer = None
            self._queue.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()
        return self._lost_why or next(iter(done)).result()

    async def _read(self, reader: asyncio.StreamReader) -> str:
        try:
            while (body := await read_compositor_frame(reader)) is not None:
                try:
                    event = parse_from_compositor(decode_body(body))
                except UnknownMessageType as exc:  # a newer compositor: skip, keep the connection
                    if str(exc) not in self._unknown_types:
                        self._unknown_types.add(str(exc))
                        log.warning("weft-compositor: skipping an %s", exc)
                    continue
                self._handle(event)
        except ProtocolError as exc:
            return f"bad frame from weft-compositor: {exc}"
        except (OSError, ConnectionError) as exc:
            return str(exc) or type(exc).__name__
        return "weft-compositor closed the connection"

    async def _write(self, writer: asyncio.StreamWriter) -> str:
        try:
            while True:
                while not self._queue:
                    self._queued.clear()
                    await self._queued.wait()
                while self._queue:
                    writer.write(encode_frame(self._queue.popleft()))
                await writer.drain()
        except (OSError, ConnectionError) as exc:
            return str(exc) or type(exc).__name__

    def _drop_connection(self, writer: asyncio.StreamWriter, why: str) -> None:
        self._lost_why = why
        self._writer = None  # from now on messages are dropped, as while away
        self._queue.clear()
        writer.transport.abort()  # the reader sees the end at once

    def _handle(self, event: FromCompositor) -> None:
        if event.session_id not in self.surfaces:
            log.debug("weft-compositor: %s for session %d, which has no window", event.type, event.session_id)
            return
        if isinstance(event, SurfaceReady):
            log.info("session %d: window mapped", event.session_id)
        elif isinstance(event, WindowClosed):
            log.info("session %d: window closed; terminating the session", event.session_id)
            self._on_window_closed(event.session_id)

    async def close(self) -> None:
        """Send what is queued (at most FLUSH_AT_CLOSE_S), then disconnect."""
        self._closing = True
        deadline = time.monotonic() + FLUSH_AT_CLOSE_S
        while self._queue and self.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._writer is not None:
            with contextlib.suppress(OSError, ConnectionError, TimeoutError):
                await asyncio.wait_for(self._writer.drain(), max(0.0, deadline - time.monotonic()))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
