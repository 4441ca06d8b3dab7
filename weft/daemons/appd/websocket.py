"""The appd WebSocket: the same messages as JSON text frames, for the shells and app pages.

Connecting needs `?token=`: the per-boot token (a control connection: every request, every
broadcast) or a session token (bound to that session: its IPC and state only). A browser's
`Origin` must match too: a control origin from WEFT_APPD_ORIGINS, or `weft-app://<app_id>`
for a session connection. Clients without `Origin` are local programs, not web pages.

Limits: at most MAX_PENDING_HANDSHAKES connections may wait for their upgrade request (the
oldest is dropped), a handshake must finish within HANDSHAKE_TIMEOUT_S, at most MAX_CLIENTS
are admitted, and what is queued for a client is bounded in bytes (hub.py): a client that does
not read is disconnected.
"""
from __future__ import annotations

import asyncio
import logging
import socket
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from weft.daemons.appd.accept import LISTEN_BACKLOG, RateLimitedWarning, accept_forever
from weft.daemons.appd.dispatch import Caller, Dispatcher
from weft.daemons.appd.hub import Hub, Subscriber
from weft.daemons.appd.sessions import SessionManager
from weft.daemons.appd.tokens import same_token
from weft.daemons.protocol import MAX_FRAME_BYTES, Error, ProtocolError, decode_json_request

log = logging.getLogger("weft.appd")


MAX_PENDING_HANDSHAKES = 64  # accepted connections that have not been admitted yet
HANDSHAKE_TIMEOUT_S = 5.0  # from accept to the end of the opening handshake
MAX_CLIENTS = 256  # admitted connections (shells, app pages, local programs)
SLOW_CLOSE_TIMEOUT_S = 2.0


class _PendingHandshakes:
    """Accepted connections not admitted yet, oldest first. When full, the oldest is dropped:
    a flood of half-open connections holds a bounded number of descriptors, and a real client,
    whose upgrade request follows its connect at once, still gets through."""

    def __init__(self, limit: int):
        self.limit = limit
        self.connections: dict[ServerConnection, None] = {}  # insertion-ordered
        self.evictions = RateLimitedWarning()

    def add(self, connection: ServerConnection) -> None:
        while len(self.connections) >= self.limit:
            oldest = next(iter(self.connections))
            del self.connections[oldest]
            oldest.transport.abort()
            self.evictions.warn("dropping half-open WebSocket connections: more than %d handshakes pending",
                                self.limit)
        self.connections[connection] = None

    def discard(self, connection: ServerConnection) -> None:
        self.connections.pop(connection, None)

    def abort_all(self) -> None:
        for connection in list(self.connections):
            connection.transport.abort()
        self.connections.clear()


class _Connection(ServerConnection):
    """A connection that counts as pending from accept until admitted or closed."""

    def __init__(self, pending: _PendingHandshakes, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pending = pending
        self.caller: Caller | None = None  # set when admitted

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.pending.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pending.discard(self)
        super().connection_lost(exc)


class WebSocketServer:
    def __init__(self, port: int, boot_token: str, control_origins: frozenset[str],
                 manager: SessionManager, hub: Hub, dispatcher: Dispatcher):
        self.port = port
        self.boot_token = boot_token
        self.control_origins = control_origins
        self.manager = manager
        self.hub = hub
        self.dispatcher = dispatcher
        self.pending = _PendingHandshakes(MAX_PENDING_HANDSHAKES)
        self.open_connections = 0
        self.server: Server | None = None
        self.listener: socket.socket | None = None
        self.accepting: asyncio.Task[None] | None = None
        self.closing: set[asyncio.Task[None]] = set()  # connections being dropped for not reading

    async def start(self) -> int:
        """Bind 127.0.0.1 (loopback only) and return the port actually bound."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(LISTEN_BACKLOG)
        except OSError:
            listener.close()
            raise
        self.listener = listener
        self.server = await serve(self._connection, sock=listener, process_request=self._admit,
                                  open_timeout=HANDSHAKE_TIMEOUT_S, max_size=MAX_FRAME_BYTES, ping_interval=None,
                                  compression=None)  # small local messages: deflate only costs CPU
        # websockets runs the handshake (with its timeout) and the handler, and refuses handshakes
        # unless its asyncio server is serving; the accepting is ours (accept.py), so connections
        # are counted from the start and EMFILE is handled calmly: take the listening socket's
        # reader away from asyncio's accept loop.
        asyncio.get_running_loop().remove_reader(listener.fileno())
        self.accepting = asyncio.create_task(accept_forever(listener, self._attach, "WebSocket"))
        return int(listener.getsockname()[1])

    async def close(self) -> None:
        if self.accepting is not None:
            self.accepting.cancel()
        self.pending.abort_all()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _attach(self, conn: socket.socket) -> None:
        assert self.server is not None
        server = self.server

        def connection() -> _Connection:
            # as websockets' serve() builds it, with the options given above
            protocol = ServerProtocol(max_size=MAX_FRAME_BYTES, logger=server.logger)
            return _Connection(self.pending, protocol, server, ping_interval=None)

        await asyncio.get_running_loop().connect_accepted_socket(connection, conn)

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        assert isinstance(connection, _Connection)
        connection.pending.discard(connection)  # it sent a whole request: no longer half-open
        if self.open_connections >= MAX_CLIENTS:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        token = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        origin = request.headers.get("Origin")
        if token and same_token(token, self.boot_token):
            if origin is not None and origin not in self.control_origins:
                return connection.respond(HTTPStatus.FORBIDDEN, "origin not allowed\n")
            connection.caller = Caller()
            return None
        session = self.manager.by_token(token) if token else None
        if session is None:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "a valid token is required\n")
        if origin is not None and origin != f"weft-app://{session.app_id}":
            return connection.respond(HTTPStatus.FORBIDDEN, "origin not allowed for this session\n")
        connection.caller = Caller(bound_session=session.id)
        return None

    async def _connection(self, connection: ServerConnection) -> None:
        assert isinstance(connection, _Connection) and connection.caller is not None
        caller = connection.caller
        self.open_connections += 1
        subscriber = self.hub.subscribe(caller.bound_session, lambda reason: self._drop(connection, reason))
        sender = asyncio.create_task(self._send_all(connection, subscriber))
        try:
            async for frame in connection:
                if not isinstance(frame, str):
                    continue  # binary frames carry nothing in this protocol
                try:
                    reply = await self.dispatcher.handle(decode_json_request(frame), caller)
                except ProtocolError as exc:
                    reply = Error(code=exc.code, message=str(exc))
                subscriber.offer(reply)  # one queue, one sender: replies stay in order, within the budget
        except ConnectionClosed:
            pass
        finally:
            self.open_connections -= 1
            self.hub.unsubscribe(subscriber)
            sender.cancel()

    def _drop(self, connection: _Connection, reason: str) -> None:
        """The hub dropped this client's queue: close the connection (it is not reading)."""
        assert connection.caller is not None
        who = "control" if connection.caller.bound_session is None else f"session {connection.caller.bound_session}"
        log.warning("closing a WebSocket client (%s) that does not read its messages: %s", who, reason)
        task = asyncio.create_task(self._close_slow(connection))
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    @staticmethod
    async def _close_slow(connection: ServerConnection) -> None:
        try:
            async with asyncio.timeout(SLOW_CLOSE_TIMEOUT_S):  # its buffers are full: the close frame may not go out
                await connection.close(CloseCode.POLICY_VIOLATION, "not reading its messages")
        except TimeoutError:
            connection.transport.abort()

    @staticmethod
    async def _send_all(connection: ServerConnection, subscriber: Subscriber) -> None:
        try:
            while True:
                await connection.send(await subscriber.next())
        except ConnectionClosed:
            pass
