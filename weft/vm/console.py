"""The test console: a root shell on the guest's /dev/hvc0 (test profile), reached through a
QEMU socket chardev. Each command is framed so that its exact output and exit status come
back: the command travels base64-encoded, its merged stdout/stderr comes back base64-encoded
between two markers that carry a per-command nonce, followed by the exit status.

The framing (`frame_command`, `ReplyParser`) is separate from the socket, so it can be tested
on byte streams: the tty echoes the sent line and turns "\\n" into "\\r\\n", and output of an
earlier command that timed out may still arrive; none of that can be taken for the reply.
"""
from __future__ import annotations

import base64
import binascii
import re
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from weft.errors import WeftError
from weft.vm.poll import poll

BEGIN = "WEFT-BEGIN-"
END = "WEFT-END-"
# Canonical tty input lines are limited to 4096 bytes; stay well below.
MAX_LINE = 3500
RECV_SIZE = 65536


class ConsoleError(WeftError):
    """The test console is unusable (not connected, closed, or a garbled reply)."""


class ConsoleTimeout(ConsoleError):
    pass


class ConsoleClosed(ConsoleError):
    """No connection (never made, or the other end closed it); connecting again may work:
    QEMU's socket chardev accepts a new connection."""


@dataclass(frozen=True)
class Reply:
    status: int
    output: str


def new_nonce() -> str:
    return secrets.token_hex(8)


def _escaped(marker: str) -> str:
    """`marker` with a backslash before its last letter: the same word to the shell, other bytes on the wire."""
    return f"{marker[:-2]}\\{marker[-2:]}"


def frame_command(command: str, nonce: str) -> str:
    """The shell line that runs `command` with bash and reports its output and status."""
    encoded = base64.b64encode(command.encode()).decode()
    files = f"/tmp/.weft-command-{nonce}"
    # A line may arrive cut short: input sent while the guest rebooted is flushed in part by the
    # new shell's tty reset. Whatever is left must never make bash swallow the lines after it,
    # so there are no quotes, no here-documents, and nothing reads the shell's own input (every
    # command reads a file or /dev/null). The markers carry a backslash in the sent text (the
    # shell drops it), so the tty's echo of the line is never taken for the reply; the command's
    # own text travels only as base64.
    begin, end = _escaped(BEGIN), _escaped(END)
    line = (f"printf %s\\\\n {begin}{nonce}; printf %s {encoded} > {files}.b64; "
            f"base64 -d {files}.b64 > {files}.sh; bash {files}.sh </dev/null > {files}.out 2>&1; "
            f"status_{nonce}=$?; base64 -w0 {files}.out </dev/null; "
            f"printf \\\\n%s\\ %s\\\\n {end}{nonce} ${{status_{nonce}}}; rm -f {files}.b64 {files}.sh {files}.out")
    if len(line) > MAX_LINE:
        raise ConsoleError(f"command too long for the test console ({len(command)} bytes)")
    return line


class ReplyParser:
    """Collects console bytes until the reply to the command framed with `nonce` is complete."""

    def __init__(self, nonce: str):
        begin, end = (BEGIN + nonce).encode(), (END + nonce).encode()
        self._pattern = re.compile(re.escape(begin) + rb"\r?\n(.*?)" + re.escape(end) + rb" (\d+)\r?\n", re.S)
        self._buffer = b""

    def feed(self, data: bytes) -> Reply | None:
        """Add received bytes; the reply once it is complete, else None."""
        self._buffer += data
        match = self._pattern.search(self._buffer)
        if match is None:
            return None
        try:
            output = base64.b64decode(re.sub(rb"\s", b"", match.group(1)), validate=True)
        except binascii.Error:
            raise ConsoleError(f"garbled reply on the test console: {match.group(1)[:200]!r}") from None
        return Reply(int(match.group(2)), output.decode(errors="replace"))


class TestConsole:
    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, socket_path: Path):
        self._path = socket_path
        self._sock: socket.socket | None = None

    def connect(self, timeout: float) -> None:
        def attempt() -> socket.socket | None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self._path))
                return sock
            except OSError:
                sock.close()
                return None

        self._sock = poll(attempt, what=f"the test console {self._path} to accept", timeout=timeout, interval=0.2)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def reconnect(self, timeout: float) -> None:
        self.close()
        self.connect(timeout)

    def send_line(self, line: str) -> None:
        if self._sock is None:
            raise ConsoleClosed("test console is not connected")
        try:
            self._sock.sendall(line.encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            raise ConsoleClosed("the test console closed (did QEMU exit?)") from None

    def execute(self, command: str, timeout: float) -> Reply:
        """Run `command` with bash in the guest; return its exit status and stdout+stderr."""
        nonce = new_nonce()
        self.send_line(frame_command(command, nonce))
        parser = ReplyParser(nonce)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConsoleTimeout(f"command did not finish within {timeout:g} s: {command}")
            if (reply := parser.feed(self._recv(min(remaining, 1.0)))) is not None:
                return reply

    def _recv(self, timeout: float) -> bytes:
        if self._sock is None:
            raise ConsoleClosed("test console is not connected")
        self._sock.settimeout(timeout)
        try:
            chunk = self._sock.recv(RECV_SIZE)
        except TimeoutError:
            return b""
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise ConsoleClosed("the test console closed (did QEMU exit?)")
        return chunk
