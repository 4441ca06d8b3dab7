"""The socket appd connects to (docs/desktop.md, "appd ⇄ compositor"), served on the wl event loop.

Framing and models are weft.daemons.protocol's (4-byte LE length + msgpack map, at most 4 MiB).
A peer must have the compositor's uid and, with --appd-cgroup, be in that cgroup: app runtimes
and shells share appd's uid, and must not be able to open windows for sessions. One appd at a
time: a new accepted connection replaces the old one. A frame that is not a valid message is
logged and drops the connection (the stream cannot be trusted after it); an unknown `type`
from a newer appd is skipped. What appd has not read waits in an outbox, sent when the socket is
writable again; an appd that leaves MAX_UNSENT_BYTES unread is disconnected (it is stuck).
`lost()` is called whenever a connection ends, so the compositor can close its windows.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pywayland import lib as _wl_lib
from pywayland.server import EventLoop

from weft.daemons.compositor.loop import guarded
from weft.daemons.compositor.peers import cgroup_of
from weft.daemons.peercred import peer_credentials
from weft.daemons.protocol import (
    COMPOSITOR_MAX_FRAME_BYTES,
    LENGTH,
    Message,
    ProtocolError,
    ToCompositor,
    UnknownMessageType,
    decode_body,
    encode_frame,
    parse_to_compositor,
)
from weft.errors import WeftError

log = logging.getLogger("weft.compositor")
READABLE = EventLoop.FdMask.WL_EVENT_READABLE
WRITABLE = EventLoop.FdMask.WL_EVENT_WRITABLE
MAX_UNSENT_BYTES = 1 << 20  # appd not reading this much: drop it
wl_lib: Any = _wl_lib  # its stubs lack wl_event_source_fd_update


def bind_listener(path: Path) -> socket.socket:
    """A listening socket at `path`, in a directory only we can enter (created 0700 if missing)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.parent.stat()
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise WeftError(f"{path.parent} must be owned by uid {os.getuid()} with mode 0700 (it holds the "
                        "compositor's IPC socket)")
    if path.is_socket():
        path.unlink()  # left by an earlier run: the directory is ours, so is the socket
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        listener.bind(str(path))
    except OSError as exc:
        listener.close()
        raise WeftError(f"cannot bind {path}: {exc.strerror or exc}") from None
    os.chmod(path, 0o600)
    listener.listen(4)
    return listener


class AppdServer:
    def __init__(self, loop: EventLoop, listener: socket.socket, appd_cgroup: str | None,
                 handle: Callable[[ToCompositor], None], lost: Callable[[], None]) -> None:
        self._loop = loop
        self._listener = listener
        self._appd_cgroup = appd_cgroup
        self._handle = handle
        self._lost = lost
        self._peer: socket.socket | None = None
        self._peer_source: Any = None
        self._inbox = bytearray()
        self._outbox = bytearray()
        self._unknown_types: set[str] = set()
        self._accept_source: Any = loop.add_fd(listener.fileno(), guarded(self._on_accept), READABLE)

    @property
    def connected(self) -> bool:
        return self._peer is not None

    def send(self, message: Message) -> None:
        if self._peer is None:
            log.debug("appd is not connected: %s not sent", message.model_dump())
            return
        self._outbox += encode_frame(message)
        self._flush()
        if len(self._outbox) > MAX_UNSENT_BYTES:
            self._drop(f"it left more than {MAX_UNSENT_BYTES} bytes unread")

    def _flush(self) -> None:
        while self._peer is not None and self._outbox:
            try:
                sent = self._peer.send(self._outbox)
            except BlockingIOError:
                break
            except OSError as exc:
                self._drop(f"write failed: {exc.strerror or exc}")
                return
            del self._outbox[:sent]
        if self._peer_source is not None:  # writable wakes us only while something waits
            wl_lib.wl_event_source_fd_update(self._peer_source._ptr, READABLE | WRITABLE if self._outbox else READABLE)

    def _refusal(self, peer: socket.socket) -> str | None:
        credentials = peer_credentials(peer)
        if credentials.uid != os.getuid():
            return f"uid {credentials.uid} is not {os.getuid()}"
        if self._appd_cgroup is not None:
            cgroup = cgroup_of(credentials.pid)
            if cgroup != self._appd_cgroup:
                return f"pid {credentials.pid} is in cgroup {cgroup!r}, not appd's {self._appd_cgroup!r}"
        return None

    def _on_accept(self, _fd: int, _mask: int, _data: object) -> int:
        try:
            peer, _ = self._listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED):
                log.warning("accept on the IPC socket failed: %s", exc.strerror or exc)
            return 0
        refusal = self._refusal(peer)
        if refusal is not None:
            log.warning("refused an IPC connection: %s", refusal)
            peer.close()
            return 0
        if self._peer is not None:
            self._drop("a new appd connection replaces it")
        peer.setblocking(False)
        self._peer = peer
        self._peer_source = self._loop.add_fd(peer.fileno(), guarded(self._on_ready), READABLE)
        log.info("appd connected")
        return 0

    def _on_ready(self, _fd: int, mask: int, _data: object) -> int:
        if self._peer is None:
            return 0
        if mask & WRITABLE:
            self._flush()
        if mask & READABLE:
            self._read()
        return 0

    def _read(self) -> None:
        if self._peer is None:
            return
        try:
            chunk = self._peer.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self._drop(f"read failed: {exc.strerror or exc}")
            return
        if not chunk:
            self._drop("appd closed the connection", clean=True)
            return
        self._inbox += chunk
        try:
            self._dispatch_frames()
        except ProtocolError as exc:
            self._drop(f"bad frame: {exc}")
        self._flush()

    def _dispatch_frames(self) -> None:
        while self._peer is not None and len(self._inbox) >= LENGTH.size:
            (length,) = LENGTH.unpack_from(self._inbox)
            if length > COMPOSITOR_MAX_FRAME_BYTES:
                raise ProtocolError(f"frame of {length} bytes exceeds {COMPOSITOR_MAX_FRAME_BYTES}")
            if len(self._inbox) < LENGTH.size + length:
                return
            body = bytes(self._inbox[LENGTH.size:LENGTH.size + length])
            del self._inbox[:LENGTH.size + length]
            try:
                message = parse_to_compositor(decode_body(body))
            except UnknownMessageType as exc:
                if str(exc) not in self._unknown_types:
                    self._unknown_types.add(str(exc))
                    log.warning("skipping: %s", exc)
                continue
            self._handle(message)

    def _drop(self, why: str, clean: bool = False, stopping: bool = False) -> None:
        if self._peer is None:
            return
        (log.info if clean else log.warning)("appd connection closed: %s", why)
        if self._peer_source is not None:
            self._peer_source.remove()
        self._peer.close()
        self._peer = None
        self._peer_source = None
        self._inbox.clear()
        self._outbox.clear()
        if not stopping:
            self._lost()

    def close(self) -> None:
        self._drop("the compositor is stopping", clean=True, stopping=True)
        self._accept_source.remove()
        self._listener.close()
