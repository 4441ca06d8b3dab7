"""What a package directory contains, read through descriptors that cannot be swapped underneath.

Every package reader (check, sign, verify, install, bundle, build-image) walks the tree here.
The root is opened once; each entry is opened relative to its directory's descriptor with
O_NOFOLLOW, checked with fstat against what the listing saw (a regular file or a directory,
nothing else) and read from that descriptor, never again by path. A local user who swaps a
file for a symlink after it was listed gets the walk refused, not a copy of what the symlink
names (issue 7, defect 3).

Symlinks are followed as the reference signs them (§2.5), but resolved here one component at
a time beneath the root: a symlink leading outside the package, a loop, device files, fifos
and sockets are errors. File names must be UTF-8 without control characters
(`require_clean_name`), so the signed listing is unambiguous.
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from weft.errors import WeftError
from weft.terminal import terminal_safe

# C0 controls (TAB and LF among them), DEL and C1 controls.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# What surrogateescape makes of bytes that are not UTF-8.
_UNDECODABLE = re.compile("[\ud800-\udfff]")

# Bounds on what a walk reads, whatever the tree holds (symlinked directories can make a small
# tree list the same files many times over). The same bounds apply to bundles.
MAX_ENTRIES = 100_000
MAX_TOTAL_BYTES = 8 << 30
MAX_DEPTH = 128
MAX_SYMLINK_HOPS = 40  # the kernel's MAXSYMLINKS
READ_BYTES = 1 << 20

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a fifo swapped in after the listing must not block the open.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class PackageTreeError(WeftError):
    """The package directory holds something a package must not."""


class PackageEntryMissing(PackageTreeError):
    """A path named inside the package does not exist."""


def require_clean_name(rel: str) -> str:
    """`rel` (a path inside a package, undecodable bytes as surrogateescape) if it can be signed.

    The signed listing is `<rel>\\t<sha256>\\n` per file (reference §2.5): a name holding a tab
    and a newline can stand in for two files, so names with control characters (C0, DEL, C1)
    are refused. So are names that are not UTF-8: the reference signs them lossily, which
    makes two different names sign alike. Every legitimate name keeps the reference's digest.
    """
    if _UNDECODABLE.search(rel):
        raise PackageTreeError(f"'{terminal_safe(rel)}': file name is not valid UTF-8")
    if _CONTROL.search(rel):
        raise PackageTreeError(f"'{terminal_safe(rel)}': file name contains a control character")
    return rel


@dataclass(frozen=True)
class PackageFile:
    """One file of the package, open while the walk stands on it (the walk closes `fd`)."""

    rel: str  # '/'-separated path inside the package, as signed
    size: int  # as fstat saw it when the file was opened
    executable: bool
    fd: int

    def reader(self) -> FileReader:
        return FileReader(self)

    def read_into(self, sink: Callable[[bytes], object] | None = None) -> str:
        """Read the file once from its descriptor, passing each chunk to `sink`; its SHA-256 hex."""
        digest = hashlib.sha256()
        reader = self.reader()
        while chunk := reader.read(READ_BYTES):
            digest.update(chunk)
            if sink is not None:
                sink(chunk)
        if os.pread(self.fd, 1, self.size):
            raise PackageTreeError(f"'{self.rel}' changed while it was being read")
        return digest.hexdigest()


class FileReader:
    """A file object over a PackageFile's descriptor, for APIs that pull (tarfile): exactly
    `size` bytes, read at explicit offsets; a file that shrank meanwhile is an error."""

    def __init__(self, file: PackageFile) -> None:
        self._file = file
        self._offset = 0

    def read(self, size: int = -1) -> bytes:
        left = self._file.size - self._offset
        want = left if size < 0 else min(size, left)
        parts: list[bytes] = []
        while want > 0:
            chunk = os.pread(self._file.fd, want, self._offset)
            if not chunk:
                raise PackageTreeError(f"'{self._file.rel}' changed while it was being read")
            parts.append(chunk)
            self._offset += len(chunk)
            want -= len(chunk)
        return b"".join(parts)


def walk_package(package_dir: str | os.PathLike[str]) -> Iterator[PackageFile]:
    """Every file of the package, open, sorted by the UTF-8 bytes of its relative path.

    Each file's descriptor is valid until the next one is asked for; read it before that."""
    with _Tree(package_dir) as tree:
        yield from tree.files()


def read_inside(package_dir: str | os.PathLike[str], inner: str, max_bytes: int) -> bytes:
    """The first `max_bytes` of the regular file `inner` ('/'-separated, symlinks followed)
    without ever leaving the package; PackageEntryMissing if there is no such file."""
    with _Tree(package_dir) as tree:
        fd = tree.open_file(inner)
        try:
            return os.pread(fd, max_bytes, 0)
        finally:
            os.close(fd)


def copy_package(source: str | os.PathLike[str], dest: Path) -> Path:
    """Copy exactly the files the signature covers into a new `dest`, with normalised modes
    (0755 directories, 0644 or 0755 files): symlinks inside the package become plain files.

    Every byte comes from the descriptor the walk checked, so what is copied is what was
    listed, even if someone rearranges `source` meanwhile."""
    if not Path(source).is_dir():
        raise PackageTreeError(f"{os.fspath(source)} is neither a package directory nor a .app.tar.zst bundle")
    dest.mkdir(mode=0o755)
    for f in walk_package(source):
        target = dest / f.rel
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as out:
            f.read_into(out.write)
            os.fchmod(fd, 0o755 if f.executable else 0o644)
    for directory in [dest, *dest.rglob("*")]:
        if directory.is_dir():
            os.chmod(directory, 0o755)  # mkdir's mode is filtered by the umask
    return dest


@dataclass(frozen=True)
class _Entry:
    name: str  # in its directory
    rel: str
    phys: tuple[str, ...]  # where it really is: names from the root, no symlink among them
    info: os.stat_result  # lstat of phys
    via_symlink: bool

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.info.st_mode)


class _Tree:
    """An open package root and the walk's budget."""

    def __init__(self, package_dir: str | os.PathLike[str]) -> None:
        path = os.fspath(package_dir)
        try:
            self.root = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise PackageTreeError(f"{path} is not a directory") from None
        except OSError as exc:
            raise PackageTreeError(f"cannot open {path}: {exc.strerror}") from None
        # Only to recognise absolute symlinks that point back inside; they are still resolved below root.
        self.root_parts = Path(os.path.realpath(path)).parts[1:]
        self.entries = 0
        self.total_bytes = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        os.close(self.root)

    # The walk

    def files(self) -> Iterator[PackageFile]:
        info = os.fstat(self.root)
        yield from self._directory(os.dup(self.root), (), "", frozenset({(info.st_dev, info.st_ino)}))

    def _directory(self, fd: int, phys: tuple[str, ...], prefix: str,
                   ancestors: frozenset[tuple[int, int]]) -> Iterator[PackageFile]:
        try:
            if len(ancestors) > MAX_DEPTH:
                raise PackageTreeError(f"'{prefix.rstrip('/')}' is nested more than {MAX_DEPTH} directories deep")
            for entry in self._list(fd, phys, prefix):
                if entry.is_dir:
                    identity = (entry.info.st_dev, entry.info.st_ino)
                    if identity in ancestors:
                        raise PackageTreeError(f"symlink loop at '{entry.rel}'")
                    yield from self._directory(self._open(fd, entry, _DIR_FLAGS), entry.phys, entry.rel + "/",
                                               ancestors | {identity})
                else:
                    file_fd = self._open(fd, entry, _FILE_FLAGS)
                    try:
                        yield PackageFile(rel=entry.rel, size=entry.info.st_size,
                                          executable=bool(entry.info.st_mode & 0o111), fd=file_fd)
                    finally:
                        os.close(file_fd)
        finally:
            os.close(fd)

    def _list(self, fd: int, phys: tuple[str, ...], prefix: str) -> list[_Entry]:
        """The directory's entries (symlinks resolved), ordered so that files come out sorted by
        the bytes of their full relative path: a directory sorts as its name plus '/'."""
        try:
            names = os.listdir(fd)
        except OSError as exc:
            raise PackageTreeError(f"cannot list '{prefix.rstrip('/') or '.'}': {exc.strerror}") from None
        entries = []
        for name in sorted(names):  # so that the first problem reported is always the same one
            rel = require_clean_name(prefix + os.fsencode(name).decode("utf-8", "surrogateescape"))
            self.entries += 1
            if self.entries > MAX_ENTRIES:
                raise PackageTreeError(f"the package has more than {MAX_ENTRIES} files and directories")
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError as exc:
                raise self._read_error(rel, exc) from None
            via_symlink = stat.S_ISLNK(info.st_mode)
            entry_phys, info = self._resolve(phys, name, rel) if via_symlink else ((*phys, name), info)
            if stat.S_ISREG(info.st_mode):
                self.total_bytes += info.st_size
                if self.total_bytes > MAX_TOTAL_BYTES:
                    raise PackageTreeError(f"the package holds more than {MAX_TOTAL_BYTES >> 20} MiB")
            elif not stat.S_ISDIR(info.st_mode):
                raise PackageTreeError(f"'{rel}' is not a regular file or directory")
            entries.append(_Entry(name, rel, entry_phys, info, via_symlink))
        entries.sort(key=lambda e: os.fsencode(e.name) + (b"/" if e.is_dir else b""))
        return entries

    def _open(self, dir_fd: int, entry: _Entry, flags: int) -> int:
        """Open what the listing saw, and make sure it is still that very file or directory."""
        try:
            fd = (self._open_phys(entry.phys, flags) if entry.via_symlink
                  else os.open(entry.name, flags, dir_fd=dir_fd))
        except OSError as exc:
            raise self._read_error(entry.rel, exc) from None
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino, stat.S_IFMT(info.st_mode)) != \
                (entry.info.st_dev, entry.info.st_ino, stat.S_IFMT(entry.info.st_mode)):
            os.close(fd)
            raise PackageTreeError(f"'{entry.rel}' changed while it was being read")
        return fd

    # Symlinks, resolved beneath the root

    def open_file(self, inner: str) -> int:
        """Open the regular file at `inner` (relative to the root, symlinks followed inside)."""
        phys, info = self._resolve((), inner, terminal_safe(inner))
        if stat.S_ISDIR(info.st_mode) or not phys:
            raise PackageTreeError(f"'{terminal_safe(inner)}' is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise PackageTreeError(f"'{terminal_safe(inner)}' is not a regular file")
        return self._open(self.root, _Entry(phys[-1], inner, phys, info, via_symlink=True), _FILE_FLAGS)

    def _resolve(self, phys: tuple[str, ...], path: str, rel: str) -> tuple[tuple[str, ...], os.stat_result]:
        """Where `path`, taken from the directory `phys`, really leads, and the lstat of that.

        Component by component like the kernel, but `..` never climbs above the root and every
        step is opened with O_NOFOLLOW from the root's descriptor."""
        stack = list(phys)
        pending = list(reversed(path.split("/")))
        hops = 0
        if path.startswith("/"):
            raise PackageTreeError(f"'{rel}' resolves outside the package directory")
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    raise PackageTreeError(f"'{rel}' is a symlink that leads outside the package")
                stack.pop()
                continue
            info = self._lstat(stack, part, rel, hops)
            if stat.S_ISLNK(info.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise PackageTreeError(f"symlink loop at '{rel}'")
                target = self._readlink(stack, part, rel)
                if target.startswith("/"):
                    target, stack = self._inside_root(target, rel), []
                pending.extend(reversed(target.split("/")))
                continue
            if not stat.S_ISDIR(info.st_mode) and any(p not in ("", ".") for p in pending):
                raise PackageEntryMissing(f"'{rel}' not found" if not hops else f"'{rel}' is a broken symlink")
            stack.append(part)
        return tuple(stack), (self._lstat(stack[:-1], stack[-1], rel, hops) if stack else os.fstat(self.root))

    def _inside_root(self, target: str, rel: str) -> str:
        """An absolute symlink target, relative to the root, if it names a place inside."""
        parts = [p for p in target.split("/") if p not in ("", ".")]
        if tuple(parts[:len(self.root_parts)]) != self.root_parts:
            raise PackageTreeError(f"'{rel}' is a symlink that leads outside the package")
        return "/".join(parts[len(self.root_parts):])

    def _lstat(self, stack: list[str], part: str, rel: str, hops: int) -> os.stat_result:
        dir_fd = self._open_dirs(stack, rel)
        try:
            return os.stat(part, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise PackageEntryMissing(f"'{rel}' not found" if not hops else f"'{rel}' is a broken symlink") from None
        except OSError as exc:
            raise self._read_error(rel, exc) from None
        finally:
            if dir_fd != self.root:
                os.close(dir_fd)

    def _readlink(self, stack: list[str], part: str, rel: str) -> str:
        dir_fd = self._open_dirs(stack, rel)
        try:
            return os.readlink(part, dir_fd=dir_fd)
        except OSError as exc:
            raise self._read_error(rel, exc) from None
        finally:
            if dir_fd != self.root:
                os.close(dir_fd)

    def _open_dirs(self, stack: list[str] | tuple[str, ...], rel: str) -> int:
        """An O_PATH descriptor of the directory at `stack` (the root itself for an empty one)."""
        fd = self.root
        try:
            for part in stack:
                parent, fd = fd, os.open(part, _PATH_FLAGS, dir_fd=fd)
                if parent != self.root:
                    os.close(parent)
        except OSError as exc:
            if fd != self.root:
                os.close(fd)
            raise self._read_error(rel, exc) from None
        return fd

    def _open_phys(self, phys: tuple[str, ...], flags: int) -> int:
        dir_fd = self._open_dirs(phys[:-1], "/".join(phys))
        try:
            return os.open(phys[-1], flags, dir_fd=dir_fd)
        finally:
            if dir_fd != self.root:
                os.close(dir_fd)

    @staticmethod
    def _read_error(rel: str, exc: OSError) -> PackageTreeError:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO):
            # It was there a moment ago: renamed, removed, or swapped for a symlink or a socket.
            return PackageTreeError(f"'{rel}' changed while it was being read")
        return PackageTreeError(f"cannot read '{rel}': {exc.strerror}")
