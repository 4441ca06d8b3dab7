"""Bundle header memory bombs (issue 7, defect 4): a tiny .app.tar.zst whose tar stream declares
a huge PAX or GNU long-name header made `tarfile` read gigabytes into memory. The stream is now
bounded before tarfile reads it; the bombs here are checked in a process limited to 512 MiB of
address space, where the unguarded code dies of MemoryError."""
from __future__ import annotations

import io
import os
import resource
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Literal

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weft.pack import bundle
from weft.pack.bundle import BundleError, bundle_package, unbundle
from weft.pack.signing import bundle_digest
from weft.pack.tar_guard import MAX_EXTENDED_HEADER_BYTES

PACK = [sys.executable, "-m", "weft.pack.cli"]
ADDRESS_SPACE = 512 << 20
ZSTD_BLOCK = 128 << 10


def zstd_frame(prefix: bytes, zeros: int) -> bytes:
    """A zstd frame holding `prefix` (raw blocks) then `zeros` zero bytes (RLE blocks, 4 bytes
    per 128 KiB): 4 GiB of zeros in 128 KiB of file, made without compressing anything."""
    out = bytearray(b"\x28\xb5\x2f\xfd" + bytes([0x00, 7 << 3]))  # no content size; 128 KiB window
    blocks: list[tuple[int, bytes | int]] = [(0, prefix[i:i + ZSTD_BLOCK]) for i in range(0, len(prefix), ZSTD_BLOCK)]
    while zeros:
        blocks.append((1, min(zeros, ZSTD_BLOCK)))
        zeros -= min(zeros, ZSTD_BLOCK)
    for index, (kind, payload) in enumerate(blocks):
        size = payload if isinstance(payload, int) else len(payload)
        out += (int(index == len(blocks) - 1) | kind << 1 | size << 3).to_bytes(3, "little")
        out += b"\0" if isinstance(payload, int) else payload
    return bytes(out)


def header(name: str, kind: bytes, size: int, fmt: Literal[0, 1, 2] = tarfile.USTAR_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(fmt, "utf-8", "surrogateescape")


def bomb(tmp_path: Path, kind: bytes, size: int = 4 << 30) -> Path:
    path = tmp_path / "bomb.app.tar.zst"
    path.write_bytes(zstd_frame(header("././@LongLink", kind, size), size + 1024))
    return path


def run_limited(*argv: str | os.PathLike[str], env: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    return subprocess.run([*PACK, *map(str, argv)], check=False, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit, env={**os.environ, **(env or {})})


def one_error_line(proc: subprocess.CompletedProcess[str], message: str) -> bool:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    return proc.returncode != 0 and "Traceback" not in proc.stderr and len(errors) == 1 and message in errors[0]


@pytest.mark.parametrize("kind,what", [(tarfile.XHDTYPE, "PAX header"), (tarfile.GNUTYPE_LONGNAME, "GNU long name"),
                                       (tarfile.GNUTYPE_LONGLINK, "GNU long link name")])
@pytest.mark.parametrize("command", ["unbundle", "install"])
def test_huge_extended_header_is_refused_in_bounded_memory(tmp_path, kind, what, command):
    archive = bomb(tmp_path, kind)
    assert archive.stat().st_size < 200_000
    extra = ["--out", tmp_path / "out"] if command == "unbundle" else []
    proc = run_limited(command, archive, *extra, env={"WEFT_APP_STORE": str(tmp_path / "store"),
                                                      "WEFT_APP_DATA": str(tmp_path / "data")})
    assert one_error_line(proc, f"a {what} of {4 << 30} bytes"), proc.stderr
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "store").exists() or [p.name for p in (tmp_path / "store").iterdir()] == []


def test_the_memory_limit_leaves_room_for_real_bundles(sample_package, tmp_path):
    archive = bundle_package(sample_package, tmp_path / "b")
    proc = run_limited("unbundle", archive, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr


def test_a_long_chain_of_extended_headers_is_refused(tmp_path):
    """tarfile recursed once per chained header: thousands of small ones were a RecursionError."""
    record = b"30 path=com.example.notes/abc\n"
    pax = header("././@PaxHeader", tarfile.XHDTYPE, len(record)) + record.ljust(512, b"\0")
    stream = pax * 5000 + header("com.example.notes/abc", tarfile.REGTYPE, 0) + b"\0" * 1024
    archive = tmp_path / "chain.app.tar.zst"
    archive.write_bytes(zstandard.ZstdCompressor().compress(stream))
    proc = run_limited("unbundle", archive, "--out", tmp_path / "out")
    assert one_error_line(proc, "more than 3 extended headers in a row"), proc.stderr


def _pax_archive(tmp_path: Path, pax_headers: dict[str, str], *, global_header: bool = False) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers=pax_headers if global_header else None) as tar:
        info = tarfile.TarInfo("com.example.notes/a")
        info.size = 1
        if not global_header:
            info.pax_headers = pax_headers
        tar.addfile(info, io.BytesIO(b"x"))
    path = tmp_path / "x.app.tar.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    return path


@pytest.mark.parametrize("pax,global_header,message", [
    ({"size": "1"}, False, "PAX record 'size' is not allowed"),
    ({"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}, False, "PAX record 'GNU.sparse.major' is not allowed"),
    ({"comment": "hi"}, True, "PAX global headers are not allowed"),
])
def test_records_that_move_the_next_header_are_refused(tmp_path, pax, global_header, message):
    with pytest.raises(BundleError, match=message):
        unbundle(_pax_archive(tmp_path, pax, global_header=global_header), tmp_path / "out")


def _pax_stream(*records: bytes, name: str = "com.example.notes/a") -> bytes:
    """One member preceded by a PAX header holding `records` verbatim."""
    data = b"".join(records)
    return (header("././@PaxHeader", tarfile.XHDTYPE, len(data)) + data.ljust(-(-len(data) // 512) * 512, b"\0")
            + header(name, tarfile.REGTYPE, 0))


def test_digit_runs_that_tarfile_searches_in_quadratic_time_are_refused(tmp_path):
    """tarfile (< 3.11.10, CVE-2024-6232) searches each PAX header for `\\d+ hdrcharset=` from every
    position: 64 KiB of digits cost 6 s, so a 16 KB bundle of 1 000 such headers ran for hours
    in unbundle and install. Both the raw digits and well-formed records holding them are refused at once."""
    digits = b"1" * 65_000
    raw = b"".join(_pax_stream(digits, name=f"com.example.notes/{i}") for i in range(1000)) + b"\0" * 1024
    value = b"comment=" + b"1" * 64_990
    length = len(value) + 2 + 5  # a space, a newline and the 5 digits of the length itself
    record = f"{length} ".encode() + value + b"\n"
    assert len(record) == length
    records = b"".join(_pax_stream(record, name=f"com.example.notes/{i}") for i in range(1000)) + b"\0" * 1024
    for stream, message in ((raw, "corrupt PAX header"), (records, "too many long runs of digits")):
        archive = tmp_path / "digits.app.tar.zst"
        archive.write_bytes(zstandard.ZstdCompressor(level=19).compress(stream))
        assert archive.stat().st_size < 100_000
        proc = run_limited("unbundle", archive, "--out", tmp_path / "out", timeout=60)
        assert one_error_line(proc, message), proc.stderr


@pytest.mark.parametrize("records", [
    pytest.param(b"11 path=abc", id="no-newline"),
    pytest.param(b"9 path=abc\n", id="short-length"),
    pytest.param(b"13 path=abc\n", id="long-length"),
    pytest.param(b"8 pathx\n", id="no-equals"),
    pytest.param(b"6 =ab\n", id="no-keyword"),
    pytest.param(b"10 abcdef\n12 size=10\n", id="keyword-across-records"),
    pytest.param(b"000000000000000000012 path=abc\n", id="length-over-20-digits"),
])
def test_malformed_pax_records_are_refused(tmp_path, records):
    archive = tmp_path / "bad.app.tar.zst"
    archive.write_bytes(zstandard.ZstdCompressor().compress(_pax_stream(records) + b"\0" * 1024))
    with pytest.raises(BundleError, match="corrupt PAX header"):
        unbundle(archive, tmp_path / "out")


def test_sparse_members_are_refused(tmp_path):
    stream = header("com.example.notes/s", tarfile.GNUTYPE_SPARSE, 0) + b"\0" * 1024
    path = tmp_path / "s.app.tar.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(stream))
    with pytest.raises(BundleError, match="sparse members are not allowed"):
        unbundle(path, tmp_path / "out")


def test_member_and_data_bounds_are_checked_from_the_headers(tmp_path, monkeypatch):
    stream = b"".join(header(f"com.example.notes/f{i}", tarfile.REGTYPE, 0) for i in range(20)) + b"\0" * 1024
    path = tmp_path / "many.app.tar.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(stream))
    monkeypatch.setattr(bundle, "MAX_ENTRIES", 10)
    with pytest.raises(BundleError, match="more than 10 members"):
        unbundle(path, tmp_path / "out")
    # A member declaring more data than a bundle may hold is refused at its header.
    big = tmp_path / "big.app.tar.zst"
    big.write_bytes(zstd_frame(header("com.example.notes/big", tarfile.REGTYPE, (8 << 30) + 1, tarfile.GNU_FORMAT),
                               4096))
    with pytest.raises(BundleError, match="bytes of file data"):
        unbundle(big, tmp_path / "out2")


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_and_non_ascii_names_still_round_trip(make_package, tmp_path, fmt):
    """Legitimate extended headers (PAX records, GNU long names) stay well within the bounds."""
    long_name = "/".join(["a-rather-long-directory-name"] * 8) + "/naïve-file.txt"
    package = make_package(files={long_name: b"deep", "ünïcode.txt": b"u"})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
        tar.add(package, arcname="com.example.notes")
    archive = tmp_path / "long.app.tar.zst"
    archive.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    extracted = unbundle(archive, tmp_path / "out")
    assert bundle_digest(extracted) == bundle_digest(package)
    assert len(long_name.encode()) < MAX_EXTENDED_HEADER_BYTES


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=16)), max_size=6),
       cut=st.integers(0, 12_000))
def test_mangled_tar_streams_are_a_bundle_error_or_a_bundle(tmp_path, edits, cut):
    """Whatever the bytes, the guard and tarfile agree enough that the outcome is BundleError or success."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("com.example.notes/" + "l" * 120, b"long"), ("com.example.notes/ü", b"u" * 700)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    stream = bytearray(raw.getvalue())
    for at, data in edits:
        stream[at:at + len(data)] = data
    archive = tmp_path / "m.app.tar.zst"
    archive.write_bytes(zstandard.ZstdCompressor().compress(bytes(stream[:cut] if cut < len(stream) else stream)))
    out = tmp_path / "out"
    try:
        unbundle(archive, out)
    except BundleError:
        pass
    finally:
        shutil.rmtree(out, ignore_errors=True)
