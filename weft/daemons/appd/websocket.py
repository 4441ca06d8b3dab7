"""The appd WebSocket: the same messages as JSON text frames, for the shells and app pages.

Connecting needs `?token=`: the per-boot token (a control connection: every request, every
broadcast) or a session token (bound to that session: its IPC and state only). A browser's
`Origin` must match too: a control origin from WEFT_APPD_ORIGINS, or `weft-app://<app_id>`
for a session connection. Clients without `Origin` are local programs, not web pages.
"""
from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from weft.daemons.appd.dispatch import Caller, Dispatcher
from weft.daemons.appd.sessions import Hub, SessionManager, Subscriber
from weft.daemons.appd.tokens import same_token
from weft.daemons.protocol import MAX_FRAME_BYTES, Error, ProtocolError, decode_json_request, encode_json

log = logging.getLogger("weft.appd")


class WebSocketServer:
    def __init__(self, port: int, boot_token: str, control_origins: frozenset[str],
                 manager: SessionManager, hub: Hub, dispatcher: Dispatcher):
        self.port = port
        self.boot_token = boot_token
        self.control_origins = control_origins
        self.manager = manager
        self.hub = hub
        self.dispatcher = dispatcher
        self.callers: dict[ServerConnection, Caller] = {}
        self.server: Server | None = None

    async def start(self) -> int:
        """Bind 127.0.0.1 (loopback only) and return the port actually bound."""
        self.server = await serve(self._connection, "127.0.0.1", self.port, process_request=self._admit,
                                  max_size=MAX_FRAME_BYTES, ping_interval=None,
                                  compression=None)  # small local messages: deflate only costs CPU
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        token = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        origin = request.headers.get("Origin")
        if token and same_token(token, self.boot_token):
            if origin is not None and origin not in self.control_origins:
                return connection.respond(HTTPStatus.FORBIDDEN, "origin not allowed\n")
            self.callers[connection] = Caller()
            return None
        session = self.manager.by_token(token) if token else None
        if session is None:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "a valid token is required\n")
        if origin is not None and origin != f"weft-app://{session.app_id}":
            return connection.respond(HTTPStatus.FORBIDDEN, "origin not allowed for this session\n")
        self.callers[connection] = Caller(bound_session=session.id)
        return None

    async def _connection(self, connection: ServerConnection) -> None:
        caller = self.callers.pop(connection)
        subscriber = Subscriber(caller.bound_session)
        self.hub.subscribers.add(subscriber)
        sender = asyncio.create_task(self._send_all(connection, subscriber))
        try:
            async for frame in connection:
                if not isinstance(frame, str):
                    continue  # binary frames carry nothing in this protocol
                try:
                    reply = await self.dispatcher.handle(decode_json_request(frame), caller)
                except ProtocolError as exc:
                    reply = Error(code=exc.code, message=str(exc))
                subscriber.queue.put_nowait(reply)  # one queue, one sender: replies stay in order
        except ConnectionClosed:
            pass
        finally:
            self.hub.subscribers.discard(subscriber)
            sender.cancel()
            if subscriber.dropped:
                log.warning("a WebSocket client missed %d broadcasts", subscriber.dropped)

    @staticmethod
    async def _send_all(connection: ServerConnection, subscriber: Subscriber) -> None:
        try:
            while True:
                await connection.send(encode_json(await subscriber.queue.get()))
        except ConnectionClosed:
            pass
