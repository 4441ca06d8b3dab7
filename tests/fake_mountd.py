"""A stand-in weft-mountd for appd's host tests: the real protocol on a real Unix socket, no mounting.

The host has no device-mapper, so MOUNT_APP "mounts" by copying a package directory to
`<mount_root>/<app_id>` when the first reference is taken, and the last UNMOUNT_APP (or the
close of the connections holding it) removes the copy: references are counted per connection,
as weft-mountd does. Tests script it: `refuse[app_id] = (reason, message)`, `corrupted` (for
CHECK_APP), `publisher`/`mount_path` overrides, and `drop_connections()` (a helper restart).
`events` records what happened, in order.
"""
from __future__ import annotations

import shutil
import socket
import socketserver
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from weft.daemons.protocol import (
    LENGTH,
    AppMounted,
    AppStatus,
    AppUnmounted,
    CheckApp,
    ListMounts,
    Message,
    MountApp,
    MountError,
    MountReason,
    Mounts,
    UnmountApp,
    decode_body,
    encode_frame,
    parse_mountd_request,
)

PUBLISHER = "5eed" * 8
GOOD_ROOT_HASH = "a1" * 32


@dataclass
class Image:
    package: Path  # what the "mount" shows
    root_hash: str = GOOD_ROOT_HASH
    version: str = "0.1.0"
    publisher: str | None = PUBLISHER


@dataclass
class FakeMountd:
    socket_path: Path
    mount_root: Path
    images: dict[str, Image] = field(default_factory=dict)
    refuse: dict[str, tuple[MountReason, str]] = field(default_factory=dict)
    corrupted: set[str] = field(default_factory=set)
    mount_path: dict[str, str] = field(default_factory=dict)  # override the reply's mount_path
    events: list[tuple[str, str]] = field(default_factory=list)  # (what, app_id): mount/unmount/check/...
    refs: dict[str, Counter[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        fake = self
        self._connections: dict[int, socket.socket] = {}
        self._ids = iter(range(1, 1 << 30))

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with fake.lock:
                    conn = next(fake._ids)
                    fake._connections[conn] = self.request
                try:
                    fake._serve(conn, self.request)
                finally:
                    with fake.lock:
                        fake._connections.pop(conn, None)
                        fake._release_connection(conn)

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(str(self.socket_path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-mountd", daemon=True)
        self.thread.start()

    # -- what tests look at ----------------------------------------------------------------
    def total_refs(self, app_id: str) -> int:
        with self.lock:
            return sum(self.refs.get(app_id, Counter()).values())

    def count(self, what: str, app_id: str) -> int:
        with self.lock:
            return self.events.count((what, app_id))

    def drop_connections(self) -> None:
        """As if the helper restarted: every connection closes (mounts stay, as the real one leaves them)."""
        with self.lock:
            connections = list(self._connections.values())
        for sock in connections:
            sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.drop_connections()

    # -- the protocol ----------------------------------------------------------------------
    def _serve(self, conn: int, sock: socket.socket) -> None:
        while True:
            header = _recv(sock, LENGTH.size)
            if header is None:
                return
            (length,) = LENGTH.unpack(header)
            body = _recv(sock, length)
            if body is None:
                return
            request = parse_mountd_request(decode_body(body))
            with self.lock:
                reply = self._handle(conn, request)
            try:
                sock.sendall(encode_frame(reply))
            except OSError:
                return

    def _handle(self, conn: int, request: MountApp | UnmountApp | ListMounts | CheckApp) -> Message:
        if isinstance(request, ListMounts):
            return Mounts(mounts=[])  # appd never lists
        app_id = request.app_id
        self.events.append((request.type.lower(), app_id))
        if isinstance(request, MountApp):
            if app_id in self.refuse:
                reason, message = self.refuse[app_id]
                return MountError(app_id=app_id, reason=reason, message=message)
            image = self.images.get(app_id)
            if image is None:
                return MountError(app_id=app_id, reason=MountReason.NOT_INSTALLED, message=f"{app_id} is not installed")
            refs = self.refs.setdefault(app_id, Counter())
            if not +refs:
                shutil.copytree(image.package, self.mount_root / app_id)
                self.events.append(("mounted", app_id))
            refs[conn] += 1
            return AppMounted(app_id=app_id, version=image.version, root_hash=image.root_hash,
                              mount_path=self.mount_path.get(app_id, str(self.mount_root / app_id)),
                              publisher=image.publisher)
        if isinstance(request, UnmountApp):
            refs = self.refs.get(app_id, Counter())
            if refs[conn] <= 0:
                return MountError(app_id=app_id, reason=MountReason.NOT_PERMITTED, message="no reference held")
            refs[conn] -= 1
            self._unmount_if_unused(app_id)
            return AppUnmounted(app_id=app_id, remaining=sum(refs.values()))
        return AppStatus(app_id=app_id, corrupted=app_id in self.corrupted)

    def _release_connection(self, conn: int) -> None:
        for app_id, refs in self.refs.items():
            if refs.pop(conn, 0):
                self._unmount_if_unused(app_id)

    def _unmount_if_unused(self, app_id: str) -> None:
        if not +self.refs[app_id] and (self.mount_root / app_id).exists():
            shutil.rmtree(self.mount_root / app_id)
            self.events.append(("unmounted", app_id))


def _recv(sock: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except OSError:
            return None
        if not chunk:
            return None
        data += chunk
    return bytes(data)
