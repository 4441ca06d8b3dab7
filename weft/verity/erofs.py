"""Read one file out of an uncompressed EROFS image without mounting it.

Enough of the on-disk format (linux fs/erofs/erofs_fs.h) for what `mkfs.erofs` writes
without compression: superblock, compact and extended inodes, flat-plain and flat-inline
data, directories. Used to check the manifest inside a `.wapp` against its footer, both after
full verification (`verify_image`) and, for the store listing, on data nothing has verified:
so every read is bounded by the image size and a per-file limit, directories are read one
block at a time, and anything else (compression, chunked files, malformed structures) is an
ErofsError, never another exception.
"""
from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from weft.errors import WeftError

SUPERBLOCK_OFFSET = 1024
MAGIC = 0xE0F5E1E2
_SUPERBLOCK = struct.Struct("<IIIBBHQQIIII")  # magic .. xattr_blkaddr (first 48 bytes)
_COMPACT = struct.Struct("<HHHHIIIIHHI")  # 32 bytes
_EXTENDED = struct.Struct("<HHHHQIIII")  # first 32 of 64 bytes
_DIRENT = struct.Struct("<QHBB")
FLAT_PLAIN, FLAT_INLINE = 0, 2
MAX_FILE_BYTES = 16 << 20
MAX_DEPTH = 32


class ErofsError(WeftError):
    """The image is not an EROFS file system this reader understands, or the path is absent."""


@dataclass(frozen=True)
class _Inode:
    offset: int  # byte offset of the inode
    header_size: int  # inode plus inline xattrs: the inline tail starts after it
    mode: int
    size: int
    layout: int
    raw_blkaddr: int


class ErofsImage:
    def __init__(self, fh: BinaryIO, image_size: int):
        self._fh = fh
        self._size = image_size
        if image_size < SUPERBLOCK_OFFSET + _SUPERBLOCK.size:
            raise ErofsError("not an EROFS image (too small)")
        raw = self._read(SUPERBLOCK_OFFSET, _SUPERBLOCK.size)
        (magic, _checksum, _compat, blkszbits, _ext, root_nid, _inos, _time, _nsec, _blocks,
         meta_blkaddr, _xattr) = _SUPERBLOCK.unpack(raw)
        if magic != MAGIC:
            raise ErofsError("not an EROFS image (bad superblock magic)")
        if not 9 <= blkszbits <= 16:
            raise ErofsError(f"unsupported EROFS block size 2^{blkszbits}")
        self.block_size = 1 << blkszbits
        self._meta = meta_blkaddr * self.block_size
        self._root_nid = root_nid

    def _read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise ErofsError(f"EROFS structure points outside the image (offset {offset})")
        self._fh.seek(offset)
        data = self._fh.read(length)
        if len(data) != length:
            raise ErofsError("EROFS image ends early")
        return data

    def _inode(self, nid: int) -> _Inode:
        offset = self._meta + nid * 32
        i_format = struct.unpack("<H", self._read(offset, 2))[0]
        if i_format & 1:
            _fmt, xcount, mode, _r, size, blkaddr, _ino, _uid, _gid = _EXTENDED.unpack(self._read(offset, 32))
            base = 64
        else:
            _fmt, xcount, mode, _nl, size, _r, blkaddr, _ino, _uid, _gid, _r2 = _COMPACT.unpack(self._read(offset, 32))
            base = 32
        xattrs = 12 + (xcount - 1) * 4 if xcount else 0
        return _Inode(offset=offset, header_size=base + xattrs, mode=mode, size=size,
                      layout=(i_format >> 1) & 0x7, raw_blkaddr=blkaddr)

    def _span(self, inode: _Inode, start: int, length: int) -> bytes:
        """`length` bytes of the inode's data from `start`, never crossing into the inline tail."""
        if inode.layout == FLAT_PLAIN:
            return self._read(inode.raw_blkaddr * self.block_size + start, length)
        if inode.layout == FLAT_INLINE:
            full = inode.size - inode.size % self.block_size  # whole blocks; the rest is inline
            if start >= full:
                return self._read(inode.offset + inode.header_size + start - full, length)
            if start + length > full:
                raise ErofsError("EROFS read crosses into the inline tail")
            return self._read(inode.raw_blkaddr * self.block_size + start, length)
        raise ErofsError(f"EROFS data layout {inode.layout} (compressed or chunked) is not supported")

    def _data(self, inode: _Inode, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        if inode.size > min(max_bytes, MAX_FILE_BYTES):
            raise ErofsError(f"file of {inode.size} bytes is larger than the {min(max_bytes, MAX_FILE_BYTES)} "
                             f"bytes allowed here")
        full = inode.size - inode.size % self.block_size
        head = self._span(inode, 0, full) if full else b""
        return head + self._span(inode, full, inode.size - full)

    def _blocks(self, directory: _Inode) -> Iterator[bytes]:
        """The directory's data block by block (a lookup usually stops early)."""
        if directory.size > MAX_FILE_BYTES:
            raise ErofsError(f"directory of {directory.size} bytes is too large to read here")
        for start in range(0, directory.size, self.block_size):
            yield self._span(directory, start, min(self.block_size, directory.size - start))

    def _lookup(self, directory: _Inode, name: bytes) -> int:
        for block in self._blocks(directory):
            if len(block) < _DIRENT.size:
                raise ErofsError("truncated EROFS directory block")
            count = _DIRENT.unpack_from(block, 0)[1] // _DIRENT.size
            if not 0 < count <= len(block) // _DIRENT.size:
                raise ErofsError("corrupt EROFS directory block")
            entries = [_DIRENT.unpack_from(block, i * _DIRENT.size) for i in range(count)]
            for i, (nid, nameoff, _type, _r) in enumerate(entries):
                end = entries[i + 1][1] if i + 1 < count else len(block)
                entry_name = block[nameoff:end].split(b"\0", 1)[0]
                if entry_name == name:
                    return int(nid)
        raise ErofsError(f"'{name.decode(errors='replace')}' not found in the image")

    def read_file(self, path: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        """The contents of the regular file `path`; a larger file than `max_bytes` is an ErofsError."""
        inode = self._inode(self._root_nid)
        parts = [p for p in path.split("/") if p]
        if len(parts) > MAX_DEPTH:
            raise ErofsError("path too deep")
        for part in parts:
            if not stat.S_ISDIR(inode.mode):
                raise ErofsError(f"'{path}': a path component is not a directory")
            inode = self._inode(self._lookup(inode, part.encode()))
        if not stat.S_ISREG(inode.mode):
            raise ErofsError(f"'{path}' is not a regular file in the image")
        return self._data(inode, max_bytes)


def read_erofs_file(image: str | os.PathLike[str] | BinaryIO, path: str, image_size: int | None = None,
                    max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Contents of `path` inside the EROFS image at the start of `image`: a file name, or a file
    opened for binary reading (so a caller reads the very file it checked otherwise).

    `image_size` bounds every read (for an EROFS image followed by other data, as in a .wapp);
    `max_bytes` bounds the file (ErofsError if it is larger).
    """
    try:
        if isinstance(image, (str, os.PathLike)):
            with open(image, "rb") as fh:
                return _read_file(fh, path, image_size, max_bytes)
        return _read_file(image, path, image_size, max_bytes)
    except struct.error:
        raise ErofsError("corrupt EROFS structure") from None
    except OSError as exc:
        name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else "the image"
        raise ErofsError(f"cannot read {name}: {exc.strerror}") from None


def _read_file(fh: BinaryIO, path: str, image_size: int | None, max_bytes: int) -> bytes:
    size = image_size if image_size is not None else os.fstat(fh.fileno()).st_size
    return ErofsImage(fh, size).read_file(path, max_bytes)
