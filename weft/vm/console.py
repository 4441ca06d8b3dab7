"""The test console: a root shell on the guest's /dev/hvc0 (test profile), reached through a
QEMU socket chardev. Each command is framed so that its exact output and exit status come
back: the command travels base64-encoded, its merged stdout/stderr comes back base64-encoded
between two markers that carry a per-command nonce, followed by the exit status.
"""
from __future__ import annotations

import base64
import re
import secrets
import socket
import time
from pathlib import Path

from weft.errors import WeftError

BEGIN = "WEFT-BEGIN-"
END = "WEFT-END-"
# Canonical tty input lines are limited to 4096 bytes; stay well below.
MAX_LINE = 3500


class ConsoleTimeout(WeftError):
    pass


class TestConsole:
    def __init__(self, socket_path: Path):
        self._path = socket_path
        self._sock: socket.socket | None = None
        self._buffer = b""

    def connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self._path))
                self._sock = sock
                return
            except OSError:
                sock.close()
                if time.monotonic() > deadline:
                    raise WeftError(f"cannot connect to the test console {self._path}") from None
                time.sleep(0.2)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def send_line(self, line: str) -> None:
        if self._sock is None:
            raise WeftError("test console is not connected")
        self._sock.sendall(line.encode() + b"\n")

    def _read_until(self, pattern: re.Pattern[bytes], deadline: float) -> re.Match[bytes]:
        assert self._sock is not None
        while True:
            match = pattern.search(self._buffer)
            if match:
                return match
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConsoleTimeout("timed out waiting for the test console")
            self._sock.settimeout(min(remaining, 1.0))
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise WeftError("the test console closed (did QEMU exit?)")
            self._buffer += chunk

    def execute(self, command: str, timeout: float) -> tuple[int, str]:
        """Run `command` with bash in the guest; return (exit status, stdout+stderr)."""
        nonce = secrets.token_hex(8)
        encoded = base64.b64encode(command.encode()).decode()
        # The markers are split by quotes in the sent text, so the tty's echo of this line
        # can never be mistaken for the output.
        line = (f"printf '%s\\n' '{BEGIN}'{nonce}; "
                f"(eval \"$(printf %s {encoded} | base64 -d)\") </dev/null 2>&1 | base64 -w0; "
                f"printf '\\n%s %s\\n' '{END}'{nonce} \"${{PIPESTATUS[0]}}\"")
        if len(line) > MAX_LINE:
            raise WeftError(f"command too long for the test console ({len(command)} bytes)")
        self._buffer = b""
        self.send_line(line)
        begin, end = (BEGIN + nonce).encode(), (END + nonce).encode()
        pattern = re.compile(re.escape(begin) + rb"\r?\n(.*?)" + re.escape(end) + rb" (\d+)\r?\n", re.S)
        try:
            match = self._read_until(pattern, time.monotonic() + timeout)
        except ConsoleTimeout:
            raise ConsoleTimeout(f"command did not finish within {timeout:g} s: {command}") from None
        self._buffer = self._buffer[match.end():]
        output = base64.b64decode(re.sub(rb"\s", b"", match.group(1)))
        return int(match.group(2)), output.decode(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        """Wait until the guest shell answers (it starts late in boot, and again after a reboot)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.execute("true", timeout=min(5.0, max(0.1, deadline - time.monotonic())))
                return
            except ConsoleTimeout:
                if time.monotonic() > deadline:
                    raise ConsoleTimeout(
                        f"the guest test shell did not answer within {timeout:g} s") from None
