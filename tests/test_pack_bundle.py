"""Bundles: reproducible archives, and extraction that cannot be tricked into escaping."""
from __future__ import annotations

import io
import tarfile

import pytest
import zstandard

from weft.pack.bundle import BundleError, bundle_package, unbundle
from weft.pack.signing import bundle_digest


def test_round_trip_keeps_the_signed_content(sample_package, tmp_path):
    archive = bundle_package(sample_package, tmp_path / "out")
    assert archive.name == "com.example.notes.app.tar.zst"
    extracted = unbundle(archive, tmp_path / "x")
    assert extracted == tmp_path / "x" / "com.example.notes"
    assert bundle_digest(extracted) == bundle_digest(sample_package)


def test_bundles_are_reproducible_and_never_overwrite(sample_package, tmp_path):
    first = bundle_package(sample_package, tmp_path / "a").read_bytes()
    (sample_package / "app.wasm").touch()  # a newer mtime must not matter
    assert bundle_package(sample_package, tmp_path / "b").read_bytes() == first
    with pytest.raises(BundleError, match="already exists"):
        bundle_package(sample_package, tmp_path / "a")


def _archive(tmp_path, members) -> str:
    """Write a .app.tar.zst from (TarInfo, bytes|None) pairs."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path = tmp_path / "evil.app.tar.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    return path


def _info(name, kind=tarfile.REGTYPE, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize("members,message", [
    ([(_info("/etc/evil"), b"x")], "unsafe path"),
    ([(_info("com.example.notes/../../evil"), b"x")], "unsafe path"),
    ([(_info("com.example.notes/l", tarfile.SYMTYPE, "../../etc"), None)], "leaves the package"),
    ([(_info("com.example.notes/l", tarfile.SYMTYPE, "/etc"), None)], "leaves the package"),
    ([(_info("com.example.notes/l", tarfile.SYMTYPE, "sub"), None),
      (_info("com.example.notes/l/x"), b"x")], "below a symlink"),
    ([(_info("com.example.notes/h", tarfile.LNKTYPE, "com.example.notes/a"), None)], "hard link"),
    ([(_info("com.example.notes/dev", tarfile.CHRTYPE), None)], "device file"),
    ([(_info("com.example.notes/fifo", tarfile.FIFOTYPE), None)], "fifo"),
    ([(_info("com.example.notes/a"), b"1"), (_info("com.example.other/b"), b"2")], "more than one"),
    ([(_info("Bad_Id/a"), b"1")], "not a valid app ID"),
    ([(_info("com.example.notes/a"), b"1"), (_info("com.example.notes/a"), b"2")], "appears twice"),
])
def test_hostile_archives_are_refused_without_writing_outside(tmp_path, members, message):
    out = tmp_path / "out"
    with pytest.raises(BundleError, match=message):
        unbundle(_archive(tmp_path, members), out)
    assert list(out.iterdir()) == []  # nothing half-extracted
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("content", [b"", b"garbage", zstandard.ZstdCompressor().compress(b"not a tar" * 100)])
def test_garbage_is_a_clear_error(tmp_path, content):
    path = tmp_path / "x.app.tar.zst"
    path.write_bytes(content)
    with pytest.raises(BundleError):
        unbundle(path, tmp_path / "out")


def test_truncated_bundle_is_a_clear_error(sample_package, tmp_path):
    archive = bundle_package(sample_package, tmp_path / "b")
    archive.write_bytes(archive.read_bytes()[:-40])
    with pytest.raises(BundleError):
        unbundle(archive, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
