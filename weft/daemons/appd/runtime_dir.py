"""appd's runtime directory ($XDG_RUNTIME_DIR/weft): used only when it is ours and private.

The directory is opened once, without following a symlink, and checked through that
descriptor: owned by appd's uid and writable by nobody else. Every file appd keeps there (the
boot token, appd.wsport, last-session.json, the socket) is then reached through the descriptor:
files are written to a fresh O_EXCL|O_NOFOLLOW temporary and renamed into place (a planted
symlink is replaced, never followed), read with O_NOFOLLOW and only when they are our private
regular files, and the socket is bound through /proc/self/fd. A path swapped after the check
cannot redirect any of it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from weft.errors import WeftError

MAX_READ_BYTES = 64 * 1024  # every file appd reads back here is tiny


class UntrustedDirectory(WeftError):
    """The directory is not appd's own private directory."""


def _check_trusted(path: Path, st: os.stat_result) -> None:
    if st.st_uid != os.geteuid():
        raise UntrustedDirectory(f"refusing {path}: it belongs to uid {st.st_uid}, not to weft-appd's uid "
                                 f"{os.geteuid()}; remove it (another user may have planted it)")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedDirectory(f"refusing {path}: mode {stat.S_IMODE(st.st_mode):04o} lets other users write "
                                 f"into it; make it 0700")


def _check_parent(path: Path) -> None:
    """Whoever may rename entries in the parent can swap the directory for their own after the
    check, and clients find the socket and the token by path: the parent must be ours or root's,
    and writable by others only with the sticky bit (as /tmp is)."""
    try:
        st = os.stat(path.parent)
    except FileNotFoundError:
        return  # reported by the mkdir or open that follows
    if st.st_uid not in (0, os.geteuid()):
        raise UntrustedDirectory(f"refusing {path}: its parent {path.parent} belongs to uid {st.st_uid}, "
                                 f"who could replace it")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        raise UntrustedDirectory(f"refusing {path}: its parent {path.parent} (mode {stat.S_IMODE(st.st_mode):04o}) "
                                 f"lets other users replace it; make the parent 0700")


class RuntimeDir:
    """A trusted directory, held open; names below are single path components."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self.fd = fd

    @classmethod
    def open(cls, path: Path, create: bool = True) -> RuntimeDir:
        """Open (creating it 0700 if `create` and missing) and check `path`; raise UntrustedDirectory."""
        _check_parent(path)
        if create:
            try:
                path.mkdir(mode=0o700)
            except FileExistsError:
                pass
            except FileNotFoundError:
                raise WeftError(f"cannot create {path}: {path.parent} does not exist") from None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UntrustedDirectory(f"refusing {path}: it is a symlink or not a directory") from None
            raise WeftError(f"cannot open {path}: {exc.strerror}") from None
        try:
            _check_trusted(path, os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def write_text(self, name: str, text: str) -> None:
        """Atomically replace `name` with a new 0600 file (readers never see a partial one)."""
        temporary = f".{name}.{secrets.token_hex(8)}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=self.fd)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.rename(temporary, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)  # replaces a symlink itself
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary, dir_fd=self.fd)
            raise

    def read_private(self, name: str) -> str | None:
        """The text of `name` if it is a regular file of ours that nobody else can read or write;
        None if it is missing or anything else (a symlink, a FIFO, someone else's file)."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
                return None
            data = fh.read(MAX_READ_BYTES + 1)
        if len(data) > MAX_READ_BYTES:
            return None
        return data.decode(errors="replace")

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self.fd)

    def is_socket_or_symlink(self, name: str) -> bool:
        try:
            mode = os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return False
        return stat.S_ISSOCK(mode) or stat.S_ISLNK(mode)

    def exists(self, name: str) -> bool:
        try:
            os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def bind_path(self, name: str) -> str:
        """A path for bind(2) that resolves through the checked descriptor, not through `self.path`."""
        return f"/proc/self/fd/{self.fd}/{name}"
