"""The runtime's two outside connections: the relay to appd and the session's file portal.

Both are used from the guest's thread inside host imports, so both are blocking. A reader
thread moves relay lines into an inbox, which lets `ipc.recv` block on a queue and lets a
stop request wake it up.
"""
from __future__ import annotations

import base64
import json
import logging
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

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
        try:
            self.inbox.put_nowait(None)
        except queue.Full:
            pass  # the guest is not waiting in recv; the stop timer interrupts it instead

    def send_ready(self) -> None:
        self._send(encode_line(Ready()))

    def send_ipc(self, payload: str) -> None:
        self._send(encode_line(Ipc(payload=payload)))

    def _send(self, line: bytes) -> None:
        with self.write_lock:
            self.sock.sendall(line)


class PortalError(Exception):
    pass


class PortalClient:
    """The session's weft-file-portal, started on first use with the session's roots."""

    def __init__(self, grants: Grants):
        self.grants = grants
        self.lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self.sock is None:
            ours, theirs = socket.socketpair()
            argv = [sys.executable, "-m", "weft.daemons.file_portal", "--fd", str(theirs.fileno())]
            for root in self.grants.roots:
                argv += ["--allow" if root.writable else "--allow-read", str(root.host)]
            self.process = subprocess.Popen(argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
            theirs.close()
            self.sock, self.rfile = ours, ours.makefile("rb")
        return self.sock

    def request(self, op: str, guest_path: str, data: bytes | None = None) -> dict | None:
        located = self.grants.root_for(guest_path)
        if located is None:
            raise PortalError(f"access denied: {guest_path} is not under a granted root")
        message: dict[str, str] = {"op": op, "path": str(located[1])}
        if data is not None:
            message["data_b64"] = base64.b64encode(data).decode()
        with self.lock:
            sock = self._connect()
            sock.sendall(json.dumps(message).encode() + b"\n")
            line = self.rfile.readline()
        if not line:
            raise PortalError("file portal closed the connection")
        reply = json.loads(line)
        if isinstance(reply, dict) and "error" in reply:
            raise PortalError(reply["error"].replace(str(located[0].host), located[0].guest))
        return reply

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()  # the portal exits at end of stream
        if self.process is not None:
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
