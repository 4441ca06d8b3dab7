"""The EROFS reader as the store listing uses it: on an image nothing has verified yet.

The listing reads `wapp.toml` out of a `.wapp` through the descriptor it read the footer from,
bounded by the footer's data size and by the manifest size limit; a directory is read one
block at a time.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from weft.manifest import MAX_MANIFEST_BYTES
from weft.pack.footer import read_footer
from weft.pack.image import build_image
from weft.pack.keys import load_signing_key
from weft.verity import erofs
from weft.verity.erofs import ErofsError, read_erofs_file


@pytest.fixture
def image(make_package: Callable[..., Path], keypair: tuple[Path, Path], tmp_path: Path) -> Path:
    # many files: the root directory spans several blocks, so a lookup walks them
    files = {f"assets/file-{i:04d}-{'x' * 40}.txt": b"%d" % i for i in range(300)}
    files["big.bin"] = os.urandom(MAX_MANIFEST_BYTES + 1)
    files.update({f"root-{i:04d}-{'y' * 40}": b"" for i in range(200)})
    package = make_package(files=files)
    return build_image(package, load_signing_key(keypair[0]), tmp_path / "out" / "com.example.notes-1.0.0.wapp",
                       progress=lambda _message: None)


def test_reads_through_an_open_file_bounded_by_the_data_size(image: Path) -> None:
    size = read_footer(image).footer.data_size
    with open(image, "rb") as fh:
        manifest = read_erofs_file(fh, "wapp.toml", image_size=size, max_bytes=MAX_MANIFEST_BYTES)
        assert manifest.startswith(b"[package]")
        assert read_erofs_file(fh, "assets/file-0299-" + "x" * 40 + ".txt", image_size=size) == b"299"
        assert read_erofs_file(fh, "root-0199-" + "y" * 40, image_size=size) == b""


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of every read the EROFS reader makes from the image."""
    lengths: list[int] = []
    original = erofs.ErofsImage._read

    def counting(self: erofs.ErofsImage, offset: int, length: int) -> bytes:
        lengths.append(length)
        return original(self, offset, length)

    monkeypatch.setattr(erofs.ErofsImage, "_read", counting)
    return lengths


def test_a_file_larger_than_the_limit_is_refused_before_it_is_read(image: Path, reads: list[int]) -> None:
    size = read_footer(image).footer.data_size
    with pytest.raises(ErofsError, match=f"larger than the {MAX_MANIFEST_BYTES} bytes allowed"):
        read_erofs_file(image, "big.bin", image_size=size, max_bytes=MAX_MANIFEST_BYTES)
    assert max(reads) <= 4096  # superblock, inodes and one directory block at a time; never the file


def test_a_directory_is_read_one_block_at_a_time(image: Path, reads: list[int]) -> None:
    size = read_footer(image).footer.data_size
    assert read_erofs_file(image, "wapp.toml", image_size=size, max_bytes=MAX_MANIFEST_BYTES)
    assert max(reads) <= 4096


def test_reads_outside_the_given_size_are_refused(image: Path) -> None:
    with pytest.raises(ErofsError, match="outside the image"):
        read_erofs_file(image, "big.bin", image_size=8192)
    with pytest.raises(ErofsError, match="cannot read"):
        read_erofs_file(image.parent / "absent.wapp", "wapp.toml")
