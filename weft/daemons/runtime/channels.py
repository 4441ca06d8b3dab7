"""The runtime's two outside connections: the relay to appd and the session's file portal.

Both are used from the guest's thread inside host imports, so both are blocking. A reader
thread moves relay lines into an inbox, which lets `ipc.recv` block on a queue and lets a
stop request wake it up.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import BinaryIO

from pydantic import ValidationError

from weft.daemons.protocol import (
    PORTAL_MAX_REPLY_BYTES,
    PortalErrorReply,
    PortalList,
    PortalListReply,
    PortalRead,
    PortalReadReply,
    PortalReply,
    PortalRequest,
    PortalWrite,
    ProtocolError,
    decode_portal_reply,
    encode_portal_request,
)
from weft.daemons.relay import MAX_LINE_BYTES, Ipc, Launch, Ready, RelayError, ToRuntime, decode_line, encode_line
from weft.daemons.runtime.grants import Grants

log = logging.getLogger("weft.runtime")
INBOX_SIZE = 1024


class Relay:
    """The socket appd handed us. `inbox` yields UI payloads, then None when the session ends."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.rfile = sock.makefile("rb")
        self.write_lock = threading.Lock()
        # Bounded: when the guest stops reading, the reader blocks, the socket fills and appd
        # answers IPC_FORWARD with BUSY instead of anyone buffering without limit.
        self.inbox: queue.Queue[str | None] = queue.Queue(maxsize=INBOX_SIZE)

    def wait_launch(self) -> Launch | None:
        """Standby: block until appd assigns a session (None if appd went away first)."""
        line = self.rfile.readline(MAX_LINE_BYTES + 1)
        if not line:
            return None
        message = decode_line(line, ToRuntime)
        if not isinstance(message, Launch):
            raise RelayError("expected a launch message first")
        return message

    def start_reader(self, on_eof: Callable[[], None]) -> None:
        threading.Thread(target=self._read, args=(on_eof,), name="relay-reader", daemon=True).start()

    def _read(self, on_eof: Callable[[], None]) -> None:
        try:
            while line := self.rfile.readline(MAX_LINE_BYTES + 1):
                message = decode_line(line, ToRuntime)
                if isinstance(message, Ipc):
                    self.inbox.put(message.payload)
        except (OSError, RelayError) as exc:
            log.warning("relay closed: %s", exc)
        on_eof()  # appd is gone or ended the session

    def close_inbox(self) -> None:
        with contextlib.suppress(queue.Full):  # the guest is not waiting in recv; the stop timer interrupts it
            self.inbox.put_nowait(None)

    def send_ready(self) -> None:
        self._send(encode_line(Ready()))

    def send_ipc(self, payload: str) -> None:
        self._send(encode_line(Ipc(payload=payload)))

    def _send(self, line: bytes) -> None:
        with self.write_lock:
            self.sock.sendall(line)


class PortalError(Exception):
    pass


PORTAL_TIMEOUT_S = 5.0  # one request; reading or writing a 4 MiB local file takes milliseconds


class PortalClient:
    """The session's weft-file-portal, started on first use with the session's roots.

    Every request has a deadline. A portal that misses it, dies or answers nonsense is killed;
    the guest gets an error and the next request starts a fresh portal. The portal itself
    dies with the runtime (PR_SET_PDEATHSIG; it is started from the guest's thread, the main
    thread, which lives as long as the process).
    """

    def __init__(self, grants: Grants):
        self.grants = grants
        self.lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.rfile: BinaryIO | None = None

    def _connect(self) -> tuple[socket.socket, BinaryIO]:
        if self.sock is None or self.rfile is None:
            ours, theirs = socket.socketpair()
            argv = [sys.executable, "-m", "weft.daemons.file_portal", "--fd", str(theirs.fileno())]
            for root in self.grants.roots:
                argv += ["--allow" if root.writable else "--allow-read", str(root.host)]
            try:
                self.process = subprocess.Popen(argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
            finally:
                theirs.close()
            ours.settimeout(PORTAL_TIMEOUT_S)
            self.sock, self.rfile = ours, ours.makefile("rb")
        return self.sock, self.rfile

    def _exchange(self, request: PortalRequest) -> bytes:
        with self.lock:
            try:
                sock, rfile = self._connect()
                sock.sendall(encode_portal_request(request))
                line = rfile.readline(PORTAL_MAX_REPLY_BYTES + 1)
            except TimeoutError:
                self._discard()
                raise PortalError(f"file portal did not answer within {PORTAL_TIMEOUT_S:g} s") from None
            except OSError as exc:
                self._discard()
                raise PortalError(f"file portal failed: {exc.strerror or exc}") from None
            if not line.endswith(b"\n"):
                self._discard()
                raise PortalError("file portal closed the connection" if not line else "file portal reply too large")
            return line

    def request(self, guest_path: str, make: Callable[[str], PortalRequest]) -> PortalReply:
        """Send `make(host path)` for the guest's path; an error reply is a PortalError in the guest's terms."""
        located = self.grants.root_for(guest_path)
        if located is None:
            raise PortalError(f"access denied: {guest_path} is not under a granted root")
        try:
            request = make(str(located[1]))
        except ValidationError as exc:  # e.g. a path too long: what the portal would have answered
            raise PortalError(f"bad request: {exc.errors()[0]['msg']}") from None
        line = self._exchange(request)
        try:
            reply = decode_portal_reply(line)
        except ProtocolError:
            self._discard()
            raise PortalError("file portal sent a malformed reply") from None
        if isinstance(reply, PortalErrorReply):
            raise PortalError(reply.error.replace(str(located[0].host), located[0].guest))
        return reply

    def read(self, guest_path: str) -> bytes:
        reply = self.request(guest_path, lambda path: PortalRead(path=path))
        if not isinstance(reply, PortalReadReply):
            raise PortalError("file portal sent a malformed reply")
        try:
            return base64.b64decode(reply.data_b64, validate=True)
        except binascii.Error:
            raise PortalError("file portal sent a malformed reply") from None

    def write(self, guest_path: str, data: bytes) -> None:
        data_b64 = base64.b64encode(data).decode()
        if self.request(guest_path, lambda path: PortalWrite(path=path, data_b64=data_b64)) is not None:
            raise PortalError("file portal sent a malformed reply")

    def list_dir(self, guest_path: str) -> list[str]:
        reply = self.request(guest_path, lambda path: PortalList(path=path))
        if not isinstance(reply, PortalListReply):
            raise PortalError("file portal sent a malformed reply")
        for name in reply.entries:  # a WIT string must be valid UTF-8 (lone surrogates are not)
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise PortalError("file portal listed a name that is not UTF-8") from None
        return reply.entries

    def _close_socket(self) -> None:
        if self.rfile is not None:
            self.rfile.close()  # the file holds the descriptor open too
        if self.sock is not None:
            self.sock.close()
        self.sock = self.rfile = None

    def _discard(self) -> None:
        """Forget a portal that failed: kill it now, start a new one on the next request."""
        self._close_socket()
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def close(self) -> None:
        self._close_socket()  # the portal exits at end of stream
        if self.process is not None:
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
