"""weft-file-portal: file access beneath a fixed set of roots, as JSON lines (reference §6).

Requests (one JSON object per line): {"op":"read","path":P}, {"op":"write","path":P,"data_b64":B},
{"op":"list","path":P}. Replies: {"data_b64":...}, null (write succeeded), {"entries":[...]},
or {"error": "..."}. The models and bounds are in weft/daemons/protocol.py ("weft-file-portal").

Unlike the reference, which checked a lexically normalised path and then used the original
one, every path is resolved by the kernel with openat2(RESOLVE_BENEATH) relative to a root
directory descriptor opened at start-up: `..`, absolute symlinks and symlinks pointing out of
the root all fail, with no check-then-use race. Roots given with --allow-read refuse writes.
Only regular files are read or written: everything is opened O_NONBLOCK and checked with
fstat before use, so a FIFO or socket planted in a root cannot block the portal. Requests,
files and listings are size-limited; names that are not UTF-8 are left out of listings (a
WIT string cannot carry them) and counted in `skipped_non_utf8`. A failure in one request
is an error reply, never the end of the portal.

It serves either a listening socket path (standalone use, like the reference) or, with
--fd, a single inherited connection: weft-runtime starts one portal per session that way
and forwards the guest's `weft:app/files` calls to it. In that mode the portal asks the
kernel to SIGKILL it when the runtime dies (PR_SET_PDEATHSIG), so it never outlives its
session, even while a request is stuck.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import ctypes
import errno
import logging
import os
import signal
import socket
import socketserver
import stat
import struct
import sys
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Protocol

from weft.cli_support import ArgumentParser, add_debug_flag, run_cli
from weft.daemons.protocol import (
    PORTAL_MAX_FILE_BYTES,
    PORTAL_MAX_LIST_ENTRIES,
    PORTAL_MAX_REQUEST_BYTES,
    PortalErrorReply,
    PortalListReply,
    PortalRead,
    PortalReadReply,
    PortalReply,
    PortalWrite,
    ProtocolError,
    decode_portal_request,
    encode_portal_reply,
)
from weft.errors import UsageError, WeftError

PR_SET_PDEATHSIG = 1
OPEN_FLAGS = os.O_NONBLOCK | os.O_NOCTTY  # opening a FIFO or a tty must neither block nor adopt it

log = logging.getLogger("weft.file_portal")

SYS_OPENAT2 = 437  # the same number on every Linux architecture (unified syscall table)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class LineReader(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...
    def flush(self) -> None: ...


class Denied(Exception):
    pass


class Escape(Denied):
    """Resolution would leave the root (`..`, an absolute symlink, a relative one climbing out)."""


def openat2(dir_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """openat2(2) with RESOLVE_BENEATH: the result is always inside `dir_fd`."""
    how = struct.pack("QQQ", flags | os.O_CLOEXEC, mode, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    fd = int(_libc.syscall(SYS_OPENAT2, dir_fd, os.fsencode(path), how, len(how)))
    if fd < 0:
        err = ctypes.get_errno()
        if err == errno.EXDEV:
            raise Escape(f"access denied: {path}")
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

    @staticmethod
    def _require_regular(fd: int, path: str) -> None:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise Denied(f"not a regular file: {path}")

    def read(self, path: str) -> PortalReadReply:
        root, inner = self.locate(path)
        try:
            fd = openat2(root.fd, inner, os.O_RDONLY | OPEN_FLAGS)  # symlinks are followed only while they stay beneath
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # a socket (or a device without a driver) cannot be opened
                raise Denied(f"not a regular file: {path}") from None
            raise
        self._require_regular(fd, path)
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(PORTAL_MAX_FILE_BYTES + 1)
        if len(data) > PORTAL_MAX_FILE_BYTES:
            raise Denied(f"file larger than {PORTAL_MAX_FILE_BYTES} bytes: {path}")
        return PortalReadReply(data_b64=base64.b64encode(data).decode())

    def write(self, path: str, data_b64: str) -> None:
        root, inner = self.locate(path)
        if not root.writable:
            raise Denied(f"access denied: {root.path} is read-only")
        try:
            data = base64.b64decode(data_b64, validate=True)
        except binascii.Error as exc:
            raise Denied(f"bad base64: {exc}") from None
        if len(data) > PORTAL_MAX_FILE_BYTES:
            raise Denied(f"file larger than {PORTAL_MAX_FILE_BYTES} bytes: {path}")
        parts = PurePosixPath(inner).parts
        if not parts or parts[-1] in (".", ".."):
            raise Denied(f"not a regular file: {path}")  # the root itself is a directory
        *parents, name = parts
        parent_fd = self._make_parents(root, parents)
        try:
            # No O_TRUNC before the type check: truncating is for regular files only.
            fd = openat2(parent_fd, name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | OPEN_FLAGS, 0o600)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # a FIFO without a reader (O_NONBLOCK) or a socket
                raise Denied(f"not a regular file: {path}") from None
            raise
        finally:
            os.close(parent_fd)
        self._require_regular(fd, path)
        with os.fdopen(fd, "wb") as fh:
            os.ftruncate(fd, 0)
            fh.write(data)

    @staticmethod
    def _make_parents(root: Root, parents: list[str]) -> int:
        """A descriptor of the parent directory, creating missing directories one level at a time."""
        current = os.dup(root.fd)
        try:
            for part in parents:
                if part in (".", ".."):
                    raise Denied(f"access denied: {part}")
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=current)
                child = openat2(current, part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                os.close(current)
                current = child
            return current
        except BaseException:
            os.close(current)
            raise

    def list(self, path: str) -> PortalListReply:
        root, inner = self.locate(path)
        fd = openat2(root.fd, inner, os.O_RDONLY | os.O_DIRECTORY | OPEN_FLAGS)
        names: list[str] = []
        skipped = 0
        try:
            with os.scandir(fd) as entries:
                for entry in entries:  # stops reading a huge directory at the limit
                    try:
                        entry.name.encode("utf-8")  # undecodable bytes arrive as lone surrogates
                    except UnicodeEncodeError:
                        skipped += 1
                        continue
                    names.append(entry.name)
                    if len(names) > PORTAL_MAX_LIST_ENTRIES:
                        raise Denied(f"more than {PORTAL_MAX_LIST_ENTRIES} entries: {path}")
        finally:
            os.close(fd)
        return PortalListReply(entries=sorted(names), skipped_non_utf8=skipped)

    def handle(self, line: bytes) -> PortalReply:
        try:
            request = decode_portal_request(line)
        except ProtocolError as exc:
            return PortalErrorReply(error=str(exc))
        try:
            if isinstance(request, PortalRead):
                return self.read(request.path)
            if isinstance(request, PortalWrite):
                self.write(request.path, request.data_b64)
                return None
            return self.list(request.path)
        except Escape:
            return PortalErrorReply(error=f"access denied: {request.path}")  # the path asked for, not the component
        except Denied as exc:
            return PortalErrorReply(error=str(exc))
        except OSError as exc:
            return PortalErrorReply(error=f"{exc.strerror} (os error {exc.errno})")
        except Exception as exc:  # noqa: BLE001 - our bug; still one request's error, not the session's end
            log.error("internal error on a %s request: %s: %s", request.op, type(exc).__name__, exc)
            return PortalErrorReply(error=f"internal error: {type(exc).__name__}")

    def serve(self, rfile: LineReader, wfile: Writer) -> None:
        while line := rfile.readline(PORTAL_MAX_REQUEST_BYTES + 1):
            if len(line) > PORTAL_MAX_REQUEST_BYTES and not line.endswith(b"\n"):
                wfile.write(encode_portal_reply(PortalErrorReply(error="request too large")))
                wfile.flush()
                return  # the rest of the oversized line cannot be parsed: close
            if line.strip():
                wfile.write(encode_portal_reply(self.handle(line)))
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
    if args.fd is not None:  # one session's portal: never outlive the runtime that started it
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    portal = Portal([Root(p, True) for p in args.allow] + [Root(p, False) for p in args.allow_read])
    if args.fd is not None:
        try:
            conn = socket.socket(fileno=args.fd)
        except OSError as exc:
            raise UsageError(f"--fd {args.fd}: {exc.strerror}") from None
        with conn, conn.makefile("rb") as rfile, conn.makefile("wb") as wfile:
            portal.serve(rfile, wfile)
        return 0
    with contextlib.suppress(KeyboardInterrupt):
        _serve_path(portal, args.socket)
    return 0


def main() -> int:
    return run_cli(main_entry)


if __name__ == "__main__":
    sys.exit(main())
