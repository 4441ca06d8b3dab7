"""Bounds on a tar stream, enforced before `tarfile` reads anything big (issue 7, defect 4).

`tarfile` reads a PAX extended header or a GNU long name/link member whole, at the size its
header declares, before the caller sees a member: a 45 KB `.app.tar.zst` declaring a 4 GiB
PAX header drove `unbundle` to 3-4 GB of memory. `GuardedTarStream` sits between the
decompressor and `tarfile`, follows the archive block by block (each header parsed by
tarfile's own `TarInfo.frombuf`, so both read the same layout) and refuses, before tarfile
gets the bytes:
- an extended header (PAX `x`/`X`, GNU long name `L` or long link `K`) larger than
  MAX_EXTENDED_HEADER_BYTES, or more than MAX_EXTENDED_HEADERS_BYTES of them in all;
- more than MAX_CHAINED_EXTENDED extended headers in a row (tarfile recurses through them);
- PAX global headers, GNU sparse members and the PAX `size` and `GNU.sparse.*` records: they
  move the next header to where this reader would not look (bundles never need them);
- PAX data that is not a sequence of well-formed records, and more digits in runs than
  tarfile can search in reasonable time (MAX_PAX_DIGIT_WORK, below);
- a corrupt header, more members or more file data than the caller allows.
"""
from __future__ import annotations

import io
import re
import tarfile
from typing import BinaryIO

from weft.errors import WeftError
from weft.terminal import terminal_safe

BLOCK = tarfile.BLOCKSIZE
MAX_EXTENDED_HEADER_BYTES = 64 << 10  # a PAX path and linkpath of PATH_MAX each fit many times over
MAX_EXTENDED_HEADERS_BYTES = 64 << 20
MAX_CHAINED_EXTENDED = 3  # x, L and K before one member
_PAX_TYPES = (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE)
_EXTENDED_TYPES = (*_PAX_TYPES, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
# tarfile before 3.11.10/3.12.6 (CVE-2024-6232) searches every PAX header for rb"\d+ hdrcharset="
# from each position, which costs the square of each run of digits: one 64 KiB header of digits
# took 6 s here, so 64 MiB of them would take hours. The squares are budgeted per archive
# (about 0.4 s of that search); a legitimate name has short runs (100 000 names with 40-digit
# runs fit).
MAX_PAX_DIGIT_WORK = 1 << 28
_PAX_LENGTH = re.compile(rb"([0-9]{1,20}) ")
_DIGIT_RUN = re.compile(rb"[0-9]+")


class UnsafeTarError(WeftError):
    """The tar stream asks for more than a bundle may, or cannot be followed safely."""


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


class GuardedTarStream(io.RawIOBase):
    """A read-only file object over a decompressed tar stream, for `tarfile.open(mode="r|")`."""

    def __init__(self, raw: BinaryIO, *, max_members: int, max_file_bytes: int) -> None:
        super().__init__()
        self._raw = raw
        self._max_members = max_members
        self._max_file_bytes = max_file_bytes
        # Everything a legitimate archive within those limits can hold, headers and padding included.
        self._max_stream_bytes = (max_file_bytes + max_members * (1 + MAX_CHAINED_EXTENDED) * 2 * BLOCK
                                  + MAX_EXTENDED_HEADERS_BYTES + tarfile.RECORDSIZE)
        self._offset = 0  # bytes handed out so far
        self._header = bytearray()  # the header block being gathered
        self._skip = 0  # member data (and padding) before the next header
        self._pax = bytearray()  # a PAX header's data being gathered
        self._pax_left = 0
        self._pax_size = 0  # its declared size (what follows is padding)
        self._pax_digit_work = 0
        self._ended = False  # tarfile stops at the first zero block; so does this reader
        self._members = 0
        self._file_bytes = 0
        self._extended_bytes = 0
        self._chained = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        data = self._raw.read(size if size >= 0 else tarfile.RECORDSIZE)
        self._offset += len(data)
        if self._offset > self._max_stream_bytes:
            raise UnsafeTarError(f"more than {self._max_stream_bytes} bytes of tar data")
        self._follow(memoryview(data))
        return data

    def _follow(self, data: memoryview) -> None:
        pos = 0
        while pos < len(data) and not self._ended:
            if self._pax_left:
                take = min(self._pax_left, len(data) - pos)
                self._pax += data[pos:pos + take]
                self._pax_left -= take
                pos += take
                if not self._pax_left:
                    self._check_pax_records(bytes(self._pax), self._pax_size)
                    self._pax.clear()
            elif self._skip:
                take = min(self._skip, len(data) - pos)
                self._skip -= take
                pos += take
            else:
                take = min(BLOCK - len(self._header), len(data) - pos)
                self._header += data[pos:pos + take]
                pos += take
                if len(self._header) == BLOCK:
                    self._on_header(bytes(self._header), self._offset - len(data) + pos - BLOCK)
                    self._header.clear()

    def _on_header(self, block: bytes, at: int) -> None:
        if block.count(0) == BLOCK:
            self._ended = True
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise UnsafeTarError(f"corrupt tar header at byte {at} ({exc})") from None
        if info.size < 0:
            raise UnsafeTarError(f"negative member size at byte {at}")
        if info.type == tarfile.XGLTYPE:
            raise UnsafeTarError("PAX global headers are not allowed in a bundle")
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise UnsafeTarError("sparse members are not allowed in a bundle")
        if info.type in _EXTENDED_TYPES:
            self._on_extended(info, at)
            return
        self._chained = 0
        self._members += 1
        if self._members > self._max_members:
            raise UnsafeTarError(f"more than {self._max_members} members")
        if info.isreg() or info.type not in tarfile.SUPPORTED_TYPES:  # what tarfile skips as data
            self._file_bytes += info.size
            if self._file_bytes > self._max_file_bytes:
                raise UnsafeTarError(f"more than {self._max_file_bytes} bytes of file data")
            self._skip = _padded(info.size)

    def _on_extended(self, info: tarfile.TarInfo, at: int) -> None:
        what = ("PAX header" if info.type in _PAX_TYPES
                else "GNU long name" if info.type == tarfile.GNUTYPE_LONGNAME else "GNU long link name")
        self._chained += 1
        if self._chained > MAX_CHAINED_EXTENDED:
            raise UnsafeTarError(f"more than {MAX_CHAINED_EXTENDED} extended headers in a row at byte {at}")
        if info.size > MAX_EXTENDED_HEADER_BYTES:
            raise UnsafeTarError(f"a {what} of {info.size} bytes at byte {at} "
                                 f"(at most {MAX_EXTENDED_HEADER_BYTES} allowed)")
        self._extended_bytes += info.size
        if self._extended_bytes > MAX_EXTENDED_HEADERS_BYTES:
            raise UnsafeTarError(f"more than {MAX_EXTENDED_HEADERS_BYTES} bytes of extended headers")
        if info.type in _PAX_TYPES:
            self._pax_left = _padded(info.size)  # tarfile parses the padding too
            self._pax_size = info.size
        else:
            self._skip = _padded(info.size)

    def _check_pax_records(self, data: bytes, size: int) -> None:
        """Refuse PAX data that is not well-formed records ("<length> <keyword>=<value>\\n" filling
        `size` bytes, zeros after), the records that would move the next header, and digit runs
        over the archive's budget."""
        pos = 0
        while pos < size:
            match = _PAX_LENGTH.match(data, pos)
            length = int(match.group(1)) if match else 0
            end = pos + length
            keyword, equals, _ = data[match.end():end - 1].partition(b"=") if match else (b"", b"", b"")
            if not match or end > size or data[end - 1:end] != b"\n" or not equals or not keyword:
                raise UnsafeTarError("corrupt PAX header")
            if keyword == b"size" or keyword.startswith(b"GNU.sparse."):
                name = terminal_safe(keyword.decode("utf-8", "replace"))
                raise UnsafeTarError(f"PAX record '{name}' is not allowed in a bundle")
            pos = end
        if data[size:].count(0) != len(data) - size:
            raise UnsafeTarError("corrupt PAX header")
        self._pax_digit_work += sum(len(run) ** 2 for run in _DIGIT_RUN.findall(data))
        if self._pax_digit_work > MAX_PAX_DIGIT_WORK:
            raise UnsafeTarError("PAX headers hold too many long runs of digits")
