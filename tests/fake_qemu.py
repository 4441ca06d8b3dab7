"""A stand-in for qemu-system-x86_64 in the VM harness tests: it reads the real QEMU command line
(weft.vm.qemu.qemu_argv) for its QMP socket, serial log and test console, and plays a guest that
boots, runs each line typed on the test console in bash, and reboots.

    python fake_qemu.py [--boot-delay S] [--drop-console] -- QEMU ARGV...

A reboot (the line `systemctl reboot`, or SIGUSR1: the guest reboots by itself) does what QEMU
does: the old kernel's last line goes to the serial log, QMP sends a RESET event, and the
console's connection stays; lines sent while the guest is down wait until the next boot's
shell reads them. `--drop-console` closes the console connection at the reset instead (the
harness must connect again). `system_powerdown` over QMP ends the process.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def chardev_paths(argv: list[str]) -> dict[str, Path]:
    """id -> path of every -chardev (the tests' paths have no commas to escape)."""
    paths = {}
    for flag, value in itertools.pairwise(argv):
        if flag == "-chardev":
            options = dict(part.split("=", 1) for part in value.split(",")[1:] if "=" in part)
            paths[options["id"]] = Path(options["path"])
    return paths


def json_messages(conn: socket.socket) -> Iterator[dict[str, Any]]:
    """The JSON objects a client sends, as QEMU reads them: a stream, no separators needed."""
    decoder = json.JSONDecoder()
    buffer = ""
    while chunk := conn.recv(4096):
        buffer += chunk.decode()
        while buffer.strip():
            try:
                message, end = decoder.raw_decode(buffer.lstrip())
            except json.JSONDecodeError:
                break  # incomplete: read more
            buffer = buffer.lstrip()[end:]
            yield message


class FakeQemu:
    def __init__(self, argv: list[str], boot_delay: float, drop_console: bool):
        paths = chardev_paths(argv)
        self.boot_delay = boot_delay
        self.drop_console = drop_console
        self.lock = threading.Lock()
        self.serial = open(paths["seriallog"], "wb")  # noqa: SIM115 - open for the process's life, as QEMU's
        self.boots = 0
        self.up = threading.Event()
        self.qmp_conn: socket.socket | None = None
        self.console_conn: socket.socket | None = None
        self.qmp_server = self._listen(paths["qmp"])
        self.console_server = self._listen(paths["testshell"]) if "testshell" in paths else None

    @staticmethod
    def _listen(path: Path) -> socket.socket:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen(1)
        return server

    def write_serial(self, text: str) -> None:
        with self.lock:
            self.serial.write(text.encode())
            self.serial.flush()

    def boot(self) -> None:
        self.boots += 1
        self.write_serial(f"firmware: boot {self.boots}\n")
        time.sleep(self.boot_delay)
        self.write_serial(f"Linux version fake (boot {self.boots})\n")
        self.up.set()

    def reset(self, reason: str) -> None:
        """The guest reboots: QEMU resets the VM and keeps running."""
        self.up.clear()
        self.write_serial("reboot: Restarting system\n")
        self.send_event({"event": "RESET", "data": {"guest": True, "reason": reason},
                         "timestamp": {"seconds": int(time.time()), "microseconds": 0}})
        if self.drop_console and self.console_conn is not None:
            self.console_conn.shutdown(socket.SHUT_RDWR)
        threading.Thread(target=self.boot, daemon=True).start()

    def send_event(self, event: dict[str, object]) -> None:
        with self.lock:
            if self.qmp_conn is not None:
                self.qmp_conn.sendall(json.dumps(event).encode() + b"\r\n")

    def serve_qmp(self) -> None:
        while True:
            conn, _ = self.qmp_server.accept()
            with self.lock:
                self.qmp_conn = conn
                conn.sendall(json.dumps({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7},
                                                             "package": "fake"}, "capabilities": []}}).encode()
                             + b"\r\n")
            for request in json_messages(conn):
                command = request.get("execute")
                reply: dict[str, object] = {"return": {}}
                if command == "query-status":
                    reply = {"return": {"status": "running", "running": True, "singlestep": False}}
                if "id" in request:
                    reply["id"] = request["id"]
                with self.lock:
                    conn.sendall(json.dumps(reply).encode() + b"\r\n")
                if command == "system_powerdown":
                    os._exit(0)
            with self.lock:
                self.qmp_conn = None

    def serve_console(self) -> None:
        assert self.console_server is not None
        while True:
            conn, _ = self.console_server.accept()
            self.console_conn = conn
            buffer = b""
            try:
                while chunk := conn.recv(4096):
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        self.up.wait()  # a guest that is down reads nothing yet
                        self.run_line(conn, line.decode())
            except OSError:
                pass
            conn.close()
            self.console_conn = None

    def run_line(self, conn: socket.socket, line: str) -> None:
        if line == "systemctl reboot":
            self.reset("guest-reset")
            return
        out = subprocess.run(["bash", "--norc", "--noprofile"], input=(line + "\n").encode(),
                             capture_output=True, check=False).stdout
        # A tty's echo of the line, then the output, with "\n" sent as "\r\n".
        conn.sendall(((line + "\n").encode() + out).replace(b"\n", b"\r\n"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--boot-delay", type=float, default=0.2)
    parser.add_argument("--drop-console", action="store_true")
    parser.add_argument("qemu_argv", nargs="+")
    args = parser.parse_args()
    fake = FakeQemu(args.qemu_argv, args.boot_delay, args.drop_console)
    signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=fake.reset, args=("guest-reset",)).start())
    threading.Thread(target=fake.boot, daemon=True).start()
    if fake.console_server is not None:
        threading.Thread(target=fake.serve_console, daemon=True).start()
    fake.serve_qmp()


if __name__ == "__main__":
    main()
