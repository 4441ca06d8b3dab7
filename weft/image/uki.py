"""Read a unified kernel image (a PE/COFF file) without external tools.

`weft image publish` needs the image id, version and root hash that a build put into its UKI:
`.osrel` holds the image's os-release (IMAGE_ID=, IMAGE_VERSION=), `.cmdline` the kernel
command line with `roothash=`. Only the headers and those two sections are read, so a 60 MB
UKI costs a few page reads (the file is mapped, not loaded).

Layout used (PE/COFF specification): the DOS header's `e_lfanew` (offset 0x3c) points at
`PE\\0\\0`, then the 20-byte COFF header, the optional header (PE32 or PE32+), then the 40-byte
section headers.
"""
from __future__ import annotations

import mmap
import os
import re
import struct
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from weft.errors import WeftError

PeData = bytes | mmap.mmap

_DOS_LFANEW = 0x3C
_COFF = struct.Struct("<HHIIIHH")  # Machine, NumberOfSections, ..., SizeOfOptionalHeader, Characteristics
_SECTION = struct.Struct("<8sIIII16x")  # Name, VirtualSize, VirtualAddress, SizeOfRawData, PointerToRawData
_PE32, _PE32_PLUS = 0x10B, 0x20B
# Offset of NumberOfRvaAndSizes in the optional header; the data directories follow it.
_RVA_COUNT_OFFSET = {_PE32: 92, _PE32_PLUS: 108}
_MAX_SECTIONS = 96  # the PE/COFF limit

ROOTHASH = re.compile(r"(?:^|\s)roothash=(\S*)")
ROOTHASH_VALUE = re.compile(r"[0-9a-f]{64}")
# os-release(5): IMAGE_ID is lower-case letters, digits, ".", "_", "-"; systemd-sysupdate accepts
# versions of these characters (version_is_valid()) and puts them in file names.
IMAGE_ID = re.compile(r"[a-z0-9._-]+")
IMAGE_VERSION = re.compile(r"[A-Za-z0-9.,_+-]+")


class Section(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    offset: int  # PointerToRawData: where the section's bytes start in the file
    size: int  # SizeOfRawData: bytes in the file (rounded up to the file alignment)
    virtual_size: int  # the section's own length; 0 in some linkers' output

    @property
    def content_size(self) -> int:
        """The section's bytes without the file-alignment padding."""
        return min(self.virtual_size, self.size) if self.virtual_size else self.size

    def content(self, data: PeData) -> bytes:
        return bytes(data[self.offset:self.offset + self.content_size])


class UkiInfo(BaseModel):
    model_config = ConfigDict(frozen=True)
    image_id: str
    image_version: str
    roothash: str  # 64 lower-case hex digits
    cmdline: str


def _unpack(fmt: struct.Struct, data: PeData, offset: int, what: str) -> tuple[int, ...]:
    if offset < 0 or offset + fmt.size > len(data):
        raise WeftError(f"not a PE file: the {what} lies beyond the end of the file ({len(data)} bytes)")
    return fmt.unpack_from(data, offset)


def _headers(data: PeData) -> tuple[int, int, int, int]:
    """(offset of the optional header, its size, its magic, number of sections)."""
    if len(data) < 0x40 or data[:2] != b"MZ":
        raise WeftError("not a PE file: no MZ signature")
    (pe_offset,) = _unpack(struct.Struct("<I"), data, _DOS_LFANEW, "PE header offset")
    if data[pe_offset:pe_offset + 4] != b"PE\0\0":
        raise WeftError(f"not a PE file: no PE signature at offset {pe_offset:#x}")
    _machine, count, _time, _symtab, _symbols, optional_size, _flags = _unpack(_COFF, data, pe_offset + 4,
                                                                              "COFF header")
    optional = pe_offset + 4 + _COFF.size
    if optional_size < 2 or optional + optional_size > len(data):
        raise WeftError("not a PE file: the optional header is missing or truncated")
    (magic,) = struct.unpack_from("<H", data, optional)
    if magic not in _RVA_COUNT_OFFSET:
        raise WeftError(f"not a PE file: unknown optional header magic {magic:#x}")
    if count > _MAX_SECTIONS:
        raise WeftError(f"not a PE file: {count} sections (at most {_MAX_SECTIONS})")
    return optional, optional_size, magic, count


def pe_sections(data: PeData) -> dict[str, Section]:
    """Every section by name, from the section table. A name that occurs twice keeps its first
    section: in a multi-profile UKI the sections before the first `.profile` are the base."""
    optional, optional_size, _magic, count = _headers(data)
    sections: dict[str, Section] = {}
    table = optional + optional_size
    for index in range(count):
        raw_name, virtual_size, _address, size, offset = _unpack(_SECTION, data, table + index * _SECTION.size,
                                                                 f"section header {index}")
        name = bytes(raw_name).rstrip(b"\0").decode("ascii", errors="replace")
        if size and offset + size > len(data):
            raise WeftError(f"not a PE file: section {name!r} ({size} bytes at {offset:#x}) lies beyond the end "
                            f"of the file ({len(data)} bytes)")
        sections.setdefault(name, Section(name=name, offset=offset if size else 0, size=size,
                                          virtual_size=virtual_size))
    return sections


def parse_os_release(text: str) -> dict[str, str]:
    """os-release(5): KEY=value lines, the value optionally in single or double quotes (with
    backslash escapes inside double quotes); comments and blank lines are skipped."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            value = re.sub(r'\\([\\"$`])', r"\1", value[1:-1])
        fields[key.strip()] = value
    return fields


def _text(section: Section, data: PeData, path: Path) -> str:
    try:
        return section.content(data).replace(b"\0", b"").decode()
    except UnicodeDecodeError:
        raise WeftError(f"{path}: section {section.name} is not UTF-8 text") from None


def uki_info(path: Path) -> UkiInfo:
    """The image id, version and root hash that the UKI at `path` boots."""
    with path.open("rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:  # mmap refuses an empty file
            raise WeftError(f"{path} is empty, not a UKI")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                sections = pe_sections(data)
            except WeftError as exc:
                raise WeftError(f"{path}: {exc}") from None
            missing = [name for name in (".osrel", ".cmdline") if name not in sections]
            if missing:
                raise WeftError(f"{path} is not a UKI: it has no {' or '.join(missing)} section")
            osrel = parse_os_release(_text(sections[".osrel"], data, path))
            cmdline = " ".join(_text(sections[".cmdline"], data, path).split())
    image_id, version = osrel.get("IMAGE_ID", ""), osrel.get("IMAGE_VERSION", "")
    if not IMAGE_ID.fullmatch(image_id):
        raise WeftError(f"{path}: its os-release has no valid IMAGE_ID= (found {image_id!r})")
    if not IMAGE_VERSION.fullmatch(version):
        raise WeftError(f"{path}: its os-release has no valid IMAGE_VERSION= (found {version!r}); build with "
                        f"ImageVersion= set")
    hashes = ROOTHASH.findall(cmdline)
    if len(hashes) != 1 or not ROOTHASH_VALUE.fullmatch(hashes[0]):
        raise WeftError(f"{path}: its kernel command line has {'no' if not hashes else 'no single valid'} "
                        f"roothash=<64 hex digits>")
    return UkiInfo(image_id=image_id, image_version=version, roothash=hashes[0], cmdline=cmdline)
