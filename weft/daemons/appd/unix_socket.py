"""The appd Unix socket: length-prefixed msgpack, one reply per request, same-uid peers only.

A malformed body gets an ERROR reply and the connection stays usable (the framing is still
in step); a frame over the size cap gets an ERROR and the connection is closed, because the
stream cannot be resynchronised without reading what the peer claims to send. A client holds
at most one reply in appd's memory: one that does not read it for SEND_TIMEOUT_S is
disconnected. Accepting is bounded too (accept.py, MAX_UNIX_CLIENTS).
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

from weft.daemons.appd.accept import LISTEN_BACKLOG, RateLimitedWarning, accept_forever
from weft.daemons.appd.dispatch import Caller, Dispatcher
from weft.daemons.appd.runtime_dir import RuntimeDir
from weft.daemons.peercred import peer_credentials
from weft.daemons.protocol import (
    Error,
    ErrorCode,
    FrameTooLarge,
    Message,
    ProtocolError,
    decode_body,
    encode_frame,
    parse_request,
    read_frame,
)
from weft.errors import WeftError

log = logging.getLogger("weft.appd")
MAX_UNIX_CLIENTS = 128  # same-uid clients; a bound keeps a runaway script from using up descriptors
SEND_TIMEOUT_S = 10.0


class UnixServer:
    def __init__(self, directory: RuntimeDir, name: str, dispatcher: Dispatcher):
        self.directory = directory  # checked: ours and private (runtime_dir.py)
        self.name = name
        self.dispatcher = dispatcher
        self.listener: socket.socket | None = None
        self.accepting: asyncio.Task[None] | None = None
        self.clients: set[asyncio.StreamWriter] = set()
        self.refusals = RateLimitedWarning()

    @property
    def path(self) -> Path:
        return self.directory.path / self.name

    async def start(self) -> None:
        if self.directory.is_socket_or_symlink(self.name):
            self.directory.remove(self.name)  # stale socket from an appd that did not shut down cleanly
        elif self.directory.exists(self.name):
            raise WeftError(f"{self.path} exists and is not a socket; remove it")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # created 0600: only this user may connect
        try:
            sock.bind(self.directory.bind_path(self.name))
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            sock.close()
            raise WeftError(f"cannot bind {self.path}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
        self.listener = sock
        self.accepting = asyncio.create_task(accept_forever(sock, self._attach, "appd.sock"))

    async def close(self) -> None:
        if self.accepting is not None:
            self.accepting.cancel()
        if self.listener is not None:
            self.listener.close()
        for writer in list(self.clients):
            writer.close()
        self.directory.remove(self.name)

    async def _attach(self, conn: socket.socket) -> None:
        uid = peer_credentials(conn).uid
        if uid != os.geteuid():
            self.refusals.warn("refusing a Unix client with uid %d", uid)
            conn.close()
            return
        if len(self.clients) >= MAX_UNIX_CLIENTS:
            self.refusals.warn("refusing a Unix client: %d are connected already", len(self.clients))
            conn.close()
            return
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader, self._client)  # runs _client as a task once connected
        await loop.connect_accepted_socket(lambda: protocol, conn)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients.add(writer)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, OSError):
            pass
        except SlowReader as exc:
            log.warning("closing a Unix client: %s", exc)
            writer.transport.abort()  # its buffers are full: nothing more can be sent
        finally:
            self.clients.discard(writer)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        caller = Caller()
        while True:
            try:
                body = await read_frame(reader)
            except FrameTooLarge as exc:
                await _send(writer, Error(code=exc.code, message=str(exc)))
                return
            except ProtocolError:
                return  # the peer hung up inside a frame
            if body is None:
                return
            try:
                reply = await self.dispatcher.handle(parse_request(decode_body(body)), caller)
            except ProtocolError as exc:
                reply = Error(code=exc.code, message=str(exc))
            await _send(writer, reply)


class SlowReader(Exception):
    pass


async def _send(writer: asyncio.StreamWriter, reply: Message) -> None:
    """Write one reply and wait until the peer has taken it: a client holds at most one reply in
    appd's memory, and one that does not read for SEND_TIMEOUT_S is disconnected."""
    try:
        frame = encode_frame(reply)
    except ProtocolError as exc:  # a reply over the frame cap: say so instead of failing the connection
        frame = encode_frame(Error(code=ErrorCode.BAD_REQUEST, message=f"the reply is too large: {exc}"))
    writer.write(frame)
    try:
        await asyncio.wait_for(writer.drain(), SEND_TIMEOUT_S)
    except TimeoutError:
        raise SlowReader(f"it has not read a reply of {len(frame)} bytes for {SEND_TIMEOUT_S:.0f} s") from None
