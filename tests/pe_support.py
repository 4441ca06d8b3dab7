"""Synthetic PE/COFF files and UKIs for host tests (no toolchain needed).

`pe_file({".osrel": b"...", ...})` writes a minimal but well-formed PE32+ (or PE32) image: DOS
header, `PE\\0\\0`, COFF header, optional header with 16 data directories, section table, then
each section's bytes padded to the 512-byte file alignment, then an optional certificate
table (data directory 4). `uki(...)` is such a file with the sections a UKI has.
"""
from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping

FILE_ALIGNMENT = 0x200
SECTION_ALIGNMENT = 0x1000
PE_OFFSET = 0x40
DIRECTORIES = 16


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def _optional_header(pe32_plus: bool, headers_size: int, image_size: int, certificate: tuple[int, int]) -> bytes:
    directories = [(0, 0)] * DIRECTORIES
    directories[4] = certificate
    table = b"".join(struct.pack("<II", *d) for d in directories)
    if pe32_plus:
        head = struct.pack("<HBBIIIIIQIIHHHHHHIIIIHHQQQQII", 0x20B, 14, 0, 0, 0, 0, 0, 0, 0x140000000,
                           SECTION_ALIGNMENT, FILE_ALIGNMENT, 0, 0, 0, 0, 0, 0, 0, image_size, headers_size, 0,
                           10, 0x160, 0x100000, 0x1000, 0x100000, 0x1000, 0, DIRECTORIES)
        assert len(head) == 112
    else:
        head = struct.pack("<HBBIIIIIIIIIHHHHHHIIIIHHIIIIII", 0x10B, 14, 0, 0, 0, 0, 0, 0, 0, 0x400000,
                           SECTION_ALIGNMENT, FILE_ALIGNMENT, 0, 0, 0, 0, 0, 0, 0, image_size, headers_size, 0,
                           10, 0x140, 0x100000, 0x1000, 0x100000, 0x1000, 0, DIRECTORIES)
        assert len(head) == 96
    return head + table


def pe_file(sections: Mapping[str, bytes], *, pe32_plus: bool = True, certificate: bytes | None = None) -> bytes:
    """A PE image with `sections` (name → content) in order and, if given, `certificate` as
    the content of a WIN_CERTIFICATE in the certificate table."""
    optional_size = (112 if pe32_plus else 96) + 8 * DIRECTORIES
    headers_size = _align(PE_OFFSET + 4 + 20 + optional_size + 40 * len(sections), FILE_ALIGNMENT)
    table, body = b"", b""
    address = SECTION_ALIGNMENT
    for name, content in sections.items():
        raw_size = _align(len(content), FILE_ALIGNMENT)
        table += struct.pack("<8sIIIIIIHHI", name.encode(), len(content), address, raw_size,
                             headers_size + len(body), 0, 0, 0, 0, 0x40000040)
        body += content.ljust(raw_size, b"\0")
        address += _align(max(len(content), 1), SECTION_ALIGNMENT)
    cert_span = (0, 0)
    signature = b""
    if certificate is not None:
        # WIN_CERTIFICATE: dwLength, wRevision 2.0, wCertificateType PKCS_SIGNED_DATA; 8-byte aligned.
        entry = struct.pack("<IHH", 8 + len(certificate), 0x0200, 0x0002) + certificate
        signature = entry.ljust(_align(len(entry), 8), b"\0")
        cert_span = (headers_size + len(body), len(signature))
    dos = b"MZ".ljust(0x3C, b"\0") + struct.pack("<I", PE_OFFSET)
    coff = struct.pack("<HHIIIHH", 0x8664 if pe32_plus else 0x14C, len(sections), 0, 0, 0, optional_size,
                       0x0022 if pe32_plus else 0x0102)
    head = dos + b"PE\0\0" + coff + _optional_header(pe32_plus, headers_size, address, cert_span) + table
    return head.ljust(headers_size, b"\0") + body + signature


def uuids_of(roothash: str) -> tuple[str, str]:
    """(root partition UUID, verity partition UUID) as systemd-repart derives them from a root hash."""
    return str(uuid.UUID(roothash[:32])), str(uuid.UUID(roothash[32:]))


def osrel(image_id: str, version: str) -> bytes:
    return (f'PRETTY_NAME="WEFT OS"\nID=debian\nIMAGE_ID="{image_id}"\n'
            f"IMAGE_VERSION='{version}'\n").encode()


def uki(image_id: str = "weft-test", version: str = "2", roothash: str = "ab" * 32, *,
        certificate: bytes | None = b"\x30\x82fake-pkcs7", pe32_plus: bool = True) -> bytes:
    """A UKI as mkosi writes it: os-release and command line NUL-terminated, signed (fake)."""
    cmdline = f"console=ttyS0 roothash={roothash} systemd.show_status=1\n\0".encode()
    return pe_file({".osrel": osrel(image_id, version) + b"\0", ".cmdline": cmdline, ".uname": b"6.1.0\0",
                    ".linux": b"\x4d\x5a kernel" * 100, ".initrd": b"\x1f\x8b initrd" * 300},
                   pe32_plus=pe32_plus, certificate=certificate)
