"""weft-file-portal: file access beneath a fixed set of roots, as JSON lines (reference §6).

Requests (one JSON object per line): {"op":"read","path":P}, {"op":"write","path":P,"data_b64":B},
{"op":"list","path":P}. Replies: {"data_b64":...}, null (write succeeded), {"entries":[...]},
or {"error": "..."}.

Unlike the reference, which checked a lexically normalised path and then used the original
one, every path is resolved by the kernel with openat2(RESOLVE_BENEATH) relative to a root
directory descriptor opened at start-up: `..`, absolute symlinks and symlinks pointing out of
the root all fail, with no check-then-use race. Roots given with --allow-read refuse writes.
Requests, files and listings are size-limited.

It serves either a listening socket path (standalone use, like the reference) or, with
--fd, a single inherited connection: weft-runtime starts one portal per session that way
and forwards the guest's `weft:app/files` calls to it.
"""
from __future__ import annotations

import base64
import binascii
import ctypes
import errno
import json
import os
import signal
import socket
import socketserver
import stat
import struct
import sys
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Annotated, BinaryIO, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from weft.cli_support import ArgumentParser, add_debug_flag, run_cli
from weft.errors import UsageError, WeftError

MAX_FILE_BYTES = 4 << 20
MAX_REQUEST_BYTES = MAX_FILE_BYTES * 4 // 3 + 4096
MAX_LIST_ENTRIES = 10_000

SYS_OPENAT2 = 437  # the same number on every Linux architecture (unified syscall table)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: Annotated[str, Field(max_length=4096)]


class ReadRequest(_Request):
    op: Literal["read"]


class WriteRequest(_Request):
    op: Literal["write"]
    data_b64: str


class ListRequest(_Request):
    op: Literal["list"]


PortalRequest = TypeAdapter(Annotated[Union[ReadRequest, WriteRequest, ListRequest], Field(discriminator="op")])


class Denied(Exception):
    pass


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """openat2(2) with RESOLVE_BENEATH: the result is always inside `dir_fd`."""
    how = struct.pack("QQQ", flags | os.O_CLOEXEC, mode, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    fd = _libc.syscall(SYS_OPENAT2, dir_fd, os.fsencode(path), how, len(how))
    if fd < 0:
        err = ctypes.get_errno()
        if err == errno.EXDEV:
            raise Denied(f"access denied: {path}")
        raise OSError(err, os.strerror(err), path)
    return fd


class Root:
    def __init__(self, path: str, writable: bool):
        if not path.startswith("/"):
            raise UsageError(f"root {path!r} must be an absolute path")
        self.path = PurePosixPath(path)
        self.writable = writable
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise WeftError(f"cannot open root {path}: {exc.strerror}") from None

    def inner(self, path: PurePosixPath) -> str | None:
        if path == self.path:
            return "."
        if self.path in path.parents:
            return str(path.relative_to(self.path))
        return None


class Portal:
    def __init__(self, roots: Sequence[Root]):
        self.roots = list(roots)

    def locate(self, requested: str) -> tuple[Root, str]:
        path = PurePosixPath(requested)
        if not requested.startswith("/") or "\0" in requested:
            raise Denied(f"access denied: {requested}")
        for root in self.roots:
            inner = root.inner(path)
            if inner is not None:
                return root, inner
        raise Denied(f"access denied: {requested}")

    def read(self, path: str) -> dict:
        root, inner = self.locate(path)
        fd = openat2(root.fd, inner, os.O_RDONLY)  # symlinks are followed only while they stay beneath
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EISDIR, "not a regular file", path)
            data = fh.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise Denied(f"file larger than {MAX_FILE_BYTES} bytes: {path}")
        return {"data_b64": base64.b64encode(data).decode()}

    def write(self, path: str, data_b64: str) -> None:
        root, inner = self.locate(path)
        if not root.writable:
            raise Denied(f"access denied: {root.path} is read-only")
        try:
            data = base64.b64decode(data_b64, validate=True)
        except binascii.Error as exc:
            raise Denied(f"bad base64: {exc}") from None
        if len(data) > MAX_FILE_BYTES:
            raise Denied(f"file larger than {MAX_FILE_BYTES} bytes: {path}")
        *parents, name = PurePosixPath(inner).parts
        if name in (".", ".."):
            raise Denied(f"access denied: {path}")
        parent_fd = self._make_parents(root, parents)
        try:
            fd = openat2(parent_fd, name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        finally:
            os.close(parent_fd)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)

    @staticmethod
    def _make_parents(root: Root, parents: list[str]) -> int:
        """A descriptor of the parent directory, creating missing directories one level at a time."""
        current = os.dup(root.fd)
        try:
            for part in parents:
                if part in (".", ".."):
                    raise Denied(f"access denied: {part}")
                try:
                    os.mkdir(part, 0o700, dir_fd=current)
                except FileExistsError:
                    pass
                child = openat2(current, part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                os.close(current)
                current = child
            return current
        except BaseException:
            os.close(current)
            raise

    def list(self, path: str) -> dict:
        root, inner = self.locate(path)
        fd = openat2(root.fd, inner, os.O_RDONLY | os.O_DIRECTORY)
        try:
            names = os.listdir(fd)
        finally:
            os.close(fd)
        if len(names) > MAX_LIST_ENTRIES:
            raise Denied(f"more than {MAX_LIST_ENTRIES} entries: {path}")
        return {"entries": sorted(names)}

    def handle(self, line: bytes) -> object:
        try:
            request = PortalRequest.validate_json(line)
        except ValidationError as exc:
            return {"error": f"bad request: {exc.errors()[0]['msg']}"}
        try:
            if isinstance(request, ReadRequest):
                return self.read(request.path)
            if isinstance(request, WriteRequest):
                return self.write(request.path, request.data_b64)
            return self.list(request.path)
        except Denied as exc:
            return {"error": str(exc)}
        except OSError as exc:
            return {"error": f"{exc.strerror} (os error {exc.errno})"}

    def serve(self, rfile: BinaryIO, wfile: BinaryIO) -> None:
        while line := rfile.readline(MAX_REQUEST_BYTES + 1):
            if len(line) > MAX_REQUEST_BYTES and not line.endswith(b"\n"):
                wfile.write(b'{"error": "request too large"}\n')
                wfile.flush()
                return  # the rest of the oversized line cannot be parsed: close
            if line.strip():
                wfile.write(json.dumps(self.handle(line)).encode() + b"\n")
                wfile.flush()


def _serve_path(portal: Portal, path: str) -> None:
    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            portal.serve(self.rfile, self.wfile)

    if os.path.lexists(path):
        os.unlink(path)
    old_umask = os.umask(0o177)  # the socket file is created 0600
    try:
        server = socketserver.ThreadingUnixStreamServer(path, Handler)
    finally:
        os.umask(old_umask)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwind through `finally`: remove the socket
    try:
        server.serve_forever()
    finally:
        server.server_close()
        os.unlink(path)


def main_entry(argv: Sequence[str]) -> int:
    parser = ArgumentParser(prog="weft-file-portal", description=__doc__.split("\n\n")[0])
    parser.add_argument("socket", nargs="?", help="Unix socket path to listen on")
    parser.add_argument("--fd", type=int, help="serve one inherited, connected socket instead")
    parser.add_argument("--allow", action="append", default=[], metavar="DIR", help="read-write root")
    parser.add_argument("--allow-read", action="append", default=[], metavar="DIR", help="read-only root")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if (args.socket is None) == (args.fd is None):
        raise UsageError("give either a socket path or --fd")
    portal = Portal([Root(p, True) for p in args.allow] + [Root(p, False) for p in args.allow_read])
    if args.fd is not None:
        try:
            conn = socket.socket(fileno=args.fd)
        except OSError as exc:
            raise UsageError(f"--fd {args.fd}: {exc.strerror}") from None
        with conn, conn.makefile("rb") as rfile, conn.makefile("wb") as wfile:
            portal.serve(rfile, wfile)
        return 0
    try:
        _serve_path(portal, args.socket)
    except KeyboardInterrupt:
        pass
    return 0


def main() -> int:
    return run_cli(main_entry)


if __name__ == "__main__":
    sys.exit(main())
