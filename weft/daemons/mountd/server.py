"""weft-mountd's socket: systemd hands it over (socket activation), only appd's uid is served.

Same framing as appd's Unix socket (4-byte LE length + msgpack map), requests capped at
MOUNTD_MAX_REQUEST_BYTES. A peer of any other uid (SO_PEERCRED, taken by the kernel at
connect time) is closed at once without a byte of reply. Registry work (ioctls, mounts)
runs in one worker thread, so requests are serialised while the event loop keeps
accepting and noticing closed connections.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from weft.daemons.mountd.registry import Registry, Reply, Request
from weft.daemons.peercred import peer_credentials
from weft.daemons.protocol import (
    FrameTooLarge,
    MountError,
    MountReason,
    ProtocolError,
    decode_body,
    encode_frame,
    parse_mountd_request,
    read_mountd_request,
)
from weft.errors import WeftError

log = logging.getLogger("weft.mountd")
SD_LISTEN_FDS_START = 3
SWEEP_INTERVAL_S = 10.0


def listen_fds(env: dict[str, str] | None = None) -> list[int]:
    """The sockets systemd passed (sd_listen_fds); the variables are removed so children never see them."""
    environ = os.environ if env is None else env
    pid, count = environ.pop("LISTEN_PID", ""), environ.pop("LISTEN_FDS", "")
    environ.pop("LISTEN_FDNAMES", None)
    if pid != str(os.getpid()) or not count.isdigit():
        return []
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)))
    for fd in fds:
        os.set_inheritable(fd, False)
    return fds


def activated_socket() -> socket.socket | None:
    fds = listen_fds()
    if not fds:
        return None
    if len(fds) != 1:
        raise WeftError(f"expected one socket from systemd, got {len(fds)}")
    sock = socket.socket(fileno=fds[0])
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise WeftError("the socket systemd passed is not a Unix stream socket")
    return sock


def bind_socket(path: str, mode: int = 0o660) -> socket.socket:
    """For running by hand (development, tests): bind a listening socket ourselves."""
    with contextlib.suppress(FileNotFoundError):
        if os.path.exists(path) and not os.path.islink(path):
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        sock.listen(16)
    except OSError as exc:
        sock.close()
        raise WeftError(f"cannot listen on {path}: {exc.strerror}") from None
    return sock


class MountdServer:
    def __init__(self, registry: Registry, appd_uid: int) -> None:
        self.registry = registry
        self.appd_uid = appd_uid
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mountd-worker")
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._closing = False

    async def _work(self, fn: Callable[..., Reply | None], *args: object) -> Reply | None:
        return await asyncio.get_running_loop().run_in_executor(self.worker, fn, *args)

    async def start(self, listener: socket.socket) -> None:
        """Reconcile with the kernel first, then accept (queued connections wait meanwhile)."""
        await self._work(self.registry.reconcile)
        listener.setblocking(False)
        self._server = await asyncio.start_unix_server(self._client, sock=listener)

    async def sweep_forever(self, interval: float = SWEEP_INTERVAL_S) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._work(self.registry.sweep)

    async def close(self) -> None:
        """Stop serving. Mounts stay: a restarted helper adopts them and appd claims them again."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._clients)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, self.worker.shutdown)

    def _handle(self, conn: int, request: Request) -> Reply:
        try:
            return self.registry.handle(conn, request)
        except Exception as exc:
            log.exception("internal error on %s", request.type)
            return MountError(app_id=getattr(request, "app_id", ""), reason=MountReason.MOUNT_FAILED,
                              message=f"internal error in weft-mountd: {exc}")

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        pid, uid, _gid = peer_credentials(sock)
        if uid != self.appd_uid:
            log.warning("refusing a client with uid %d (pid %d): only uid %d is served", uid, pid, self.appd_uid)
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        conn = next(self._ids)
        log.debug("client %d connected (pid %d)", conn, pid)
        try:
            await self._serve(conn, reader, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            if not self._closing:  # references die with the connection, not with the helper
                await self._work(self.registry.release_connection, conn)
            log.debug("client %d gone", conn)

    async def _serve(self, conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                body = await read_mountd_request(reader)
            except FrameTooLarge as exc:
                writer.write(encode_frame(MountError(app_id="", reason=MountReason.BAD_REQUEST, message=str(exc))))
                await writer.drain()
                return  # the stream cannot be resynchronised
            except ProtocolError:
                return  # the peer hung up inside a frame
            if body is None:
                return
            try:
                request = parse_mountd_request(decode_body(body))
            except ProtocolError as exc:
                reply: Reply | None = MountError(app_id="", reason=MountReason.BAD_REQUEST, message=str(exc))
            else:
                reply = await self._work(self._handle, conn, request)
            assert reply is not None
            writer.write(encode_frame(reply))
            await writer.drain()
