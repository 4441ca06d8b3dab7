"""weft.image.uki: sections and UKI facts read from synthetic PE files
(tests/pe_support.py), cross-checked with binutils' objdump (it comes with gcc, ci/apt-packages.txt)."""
from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest
from pe_support import PE_OFFSET, osrel, pe_file, uki

from weft.errors import WeftError
from weft.image.uki import parse_os_release, pe_sections, uki_info

ROOTHASH = "0123456789abcdef" * 4


@pytest.mark.parametrize("pe32_plus", [True, False])
def test_sections_by_name_with_offsets_and_sizes(pe32_plus):
    data = pe_file({".osrel": b"ID=x\n", ".cmdline": b"quiet", ".linux": b"k" * 1000}, pe32_plus=pe32_plus)
    sections = pe_sections(data)
    assert list(sections) == [".osrel", ".cmdline", ".linux"]
    linux = sections[".linux"]
    assert (linux.size, linux.virtual_size, linux.content_size) == (1024, 1000, 1000)
    assert data[linux.offset:linux.offset + 1000] == b"k" * 1000
    assert sections[".osrel"].content(data) == b"ID=x\n"


def test_a_repeated_section_name_keeps_the_first():
    # A multi-profile UKI repeats .osrel/.cmdline after each .profile; the first is the base.
    data = pe_file({".osrel": b"first", ".profile": b"ID=1", ".osrel\0": b"second"})
    # pe_file keys must differ; the trailing NUL is stripped like the padding of a real name.
    assert pe_sections(data)[".osrel"].content(data) == b"first"


def test_uki_info(tmp_path):
    path = tmp_path / "weft-test.efi"
    path.write_bytes(uki("weft-test", "2", ROOTHASH))
    info = uki_info(path)
    assert (info.image_id, info.image_version, info.roothash) == ("weft-test", "2", ROOTHASH)
    assert info.cmdline == f"console=ttyS0 roothash={ROOTHASH} systemd.show_status=1"


def test_os_release_quoting():
    text = "# comment\n\nA=plain\nB='single $x'\nC=\"dq \\\"x\\\" \\$y\"\nD=\nnot a line\n"
    assert parse_os_release(text) == {"A": "plain", "B": "single $x", "C": 'dq "x" $y', "D": ""}


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "x.efi"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty"),
    (b"ELF" + b"\0" * 100, "no MZ signature"),
    (b"MZ" + b"\0" * 0x3A + struct.pack("<I", 0x40) + b"NE\0\0" + b"\0" * 100, "no PE signature"),
    (b"MZ" + b"\0" * 0x3A + struct.pack("<I", 0xFFFFFFF0), "no PE signature"),
])
def test_not_a_pe_file(tmp_path, data, message):
    with pytest.raises(WeftError, match=message):
        uki_info(_write(tmp_path, data))


def test_truncated_files_are_refused_not_misread():
    data = uki()
    sections = pe_sections(data)
    for cut in (PE_OFFSET + 10, PE_OFFSET + 30, PE_OFFSET + 200, sections[".initrd"].offset + 5):
        with pytest.raises(WeftError, match="not a PE file"):
            pe_sections(data[:cut])


def test_a_section_beyond_the_end_is_refused():
    data = bytearray(pe_file({".osrel": b"x"}))
    table = PE_OFFSET + 4 + 20 + 240
    struct.pack_into("<I", data, table + 20, 0x7FFF0000)  # PointerToRawData
    with pytest.raises(WeftError, match=r"section '\.osrel' .* beyond the end"):
        pe_sections(bytes(data))


def test_unknown_optional_header_magic():
    data = bytearray(uki())
    struct.pack_into("<H", data, PE_OFFSET + 24, 0x107)  # ROM image
    with pytest.raises(WeftError, match="unknown optional header magic 0x107"):
        pe_sections(bytes(data))


@pytest.mark.parametrize(("sections", "message"), [
    ({".cmdline": b"roothash=" + ROOTHASH.encode()}, "not a UKI: it has no .osrel section"),
    ({".osrel": osrel("weft-test", "2")}, "no .cmdline section"),
    ({".osrel": b"IMAGE_VERSION=2\n", ".cmdline": b"roothash=" + ROOTHASH.encode()}, "no valid IMAGE_ID"),
    ({".osrel": b"IMAGE_ID=weft\n", ".cmdline": b"roothash=" + ROOTHASH.encode()}, "no valid IMAGE_VERSION"),
    ({".osrel": osrel("weft", "2/../3"), ".cmdline": b"roothash=" + ROOTHASH.encode()}, "no valid IMAGE_VERSION"),
    ({".osrel": osrel("Weft OS", "2"), ".cmdline": b"roothash=" + ROOTHASH.encode()}, "no valid IMAGE_ID"),
    ({".osrel": osrel("weft", "2"), ".cmdline": b"quiet"}, "has no roothash="),
    ({".osrel": osrel("weft", "2"), ".cmdline": b"roothash=abc"}, "no single valid roothash="),
    ({".osrel": osrel("weft", "2"), ".cmdline": f"roothash={ROOTHASH} roothash={ROOTHASH}".encode()},
     "no single valid roothash="),
    ({".osrel": b"\xff\xfe", ".cmdline": b"x"}, "section .osrel is not UTF-8"),
])
def test_not_a_publishable_uki(tmp_path, sections, message):
    with pytest.raises(WeftError, match=message):
        uki_info(_write(tmp_path, pe_file(sections)))


def test_usrhash_is_not_mistaken_for_roothash(tmp_path):
    sections = {".osrel": osrel("weft", "2"), ".cmdline": f"usrhash={ROOTHASH} roothash={'ef' * 32}".encode()}
    assert uki_info(_write(tmp_path, pe_file(sections))).roothash == "ef" * 32


def test_objdump_reads_the_same_sections(tmp_path):
    path = _write(tmp_path, uki())
    out = subprocess.run(["objdump", "-h", str(path)], capture_output=True, text=True, check=True).stdout
    seen = {m[1]: (int(m[2], 16), int(m[3], 16)) for m in re.finditer(r"^\s+\d+ (\S+)\s+(\w+)\s+\w+\s+\w+\s+(\w+)",
                                                                       out, re.M)}
    ours = {s.name: (s.content_size, s.offset) for s in pe_sections(path.read_bytes()).values()}
    assert seen == ours
