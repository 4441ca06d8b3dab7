"""Check data and hash area against a root hash, the way the kernel trusts them: top-down.

The root hash authenticates the top hash block, each verified level authenticates the one
below, and level 0 authenticates the data. So a mismatch can be blamed precisely: on the
root hash, on a named hash-tree block, or on a named data block.
"""
from __future__ import annotations

import os
from collections.abc import Callable

from weft.verity.format import check_no_overlap, device_size, same_file
from weft.verity.hashing import BlockHasher, default_workers, hash_level
from weft.verity.params import SUPERBLOCK_SIZE, TreeLayout, VerityError, VerityMismatch, VerityParams, compute_layout
from weft.verity.superblock import Superblock, decode_superblock, encode_superblock


def read_superblock(hash_path: str | os.PathLike[str], hash_offset: int = 0) -> Superblock:
    try:
        with open(hash_path, "rb") as fh:
            fh.seek(hash_offset)
            raw = fh.read(SUPERBLOCK_SIZE)
    except OSError as exc:
        raise VerityError(f"cannot read hash device {os.fspath(hash_path)}: {exc.strerror}") from None
    return decode_superblock(raw)


def verify_hash(data_path: str | os.PathLike[str], hash_path: str | os.PathLike[str],
                root_hash: bytes, params: VerityParams, *, data_blocks: int, hash_offset: int = 0,
                workers: int | None = None) -> TreeLayout:
    """Raise VerityMismatch unless every byte of the data and hash area is as `format` writes it."""
    check_no_overlap(data_blocks, params, hash_offset, same_file(data_path, hash_path))
    layout = compute_layout(params, data_blocks, hash_offset)
    if len(root_hash) != params.digest_size:
        raise VerityError(f"root hash must be {params.digest_size} bytes for {params.hash_name}")
    _check_sizes(data_path, hash_path, params, layout)
    try:
        _verify(data_path, hash_path, root_hash, params, layout, hash_offset, workers or default_workers())
    except OSError as exc:
        raise VerityError(f"I/O error while verifying: {exc.strerror or exc}") from None
    return layout


def _verify(data_path: str | os.PathLike[str], hash_path: str | os.PathLike[str], root_hash: bytes,
            params: VerityParams, layout: TreeLayout, hash_offset: int, workers: int) -> None:
    hasher = BlockHasher(params)
    with open(data_path, "rb") as data, open(hash_path, "rb") as hashes:
        data_fd, hash_fd = data.fileno(), hashes.fileno()
        if params.superblock:
            _check_superblock(hash_fd, params, layout, hash_offset)
        if layout.levels == 0:
            if hasher.digest(os.pread(data_fd, params.data_block_size, 0)) != root_hash:
                raise VerityMismatch("data", "data block 0 does not match the root hash")
            return
        hbs = params.hash_block_size
        top = os.pread(hash_fd, hbs, layout.level_offset(layout.levels - 1))
        if hasher.digest(top) != root_hash:
            raise VerityMismatch("root", "the hash tree does not match the root hash "
                                         "(wrong root hash, or the top of the hash tree was modified)")
        for level in range(layout.levels - 1, 0, -1):
            hash_level(hash_fd, layout.level_offset(level - 1), hbs, layout.level_blocks[level - 1],
                       hasher, _comparer(hash_fd, layout, hasher, level, "hash"), workers)
        hash_level(data_fd, 0, params.data_block_size, layout.data_blocks, hasher,
                   _comparer(hash_fd, layout, hasher, 0, "data"), workers)


def _check_sizes(data_path: str | os.PathLike[str], hash_path: str | os.PathLike[str],
                 params: VerityParams, layout: TreeLayout) -> None:
    data_size, hash_size = device_size(data_path), device_size(hash_path)
    if data_size < layout.data_blocks * params.data_block_size:
        raise VerityMismatch("size", f"data device is truncated: {data_size} bytes, "
                                     f"{layout.data_blocks * params.data_block_size} expected")
    if hash_size < layout.end_offset:
        raise VerityMismatch("size", f"hash device is truncated: {hash_size} bytes, "
                                     f"at least {layout.end_offset} expected")


def _check_superblock(hash_fd: int, params: VerityParams, layout: TreeLayout, hash_offset: int) -> None:
    expected = encode_superblock(params, layout.data_blocks)
    length = layout.tree_offset - hash_offset
    stored = os.pread(hash_fd, length, hash_offset)
    if stored[:SUPERBLOCK_SIZE] != expected:
        raise VerityMismatch("superblock", "the verity superblock differs from the expected parameters")
    if stored[SUPERBLOCK_SIZE:].count(0) != length - SUPERBLOCK_SIZE:
        raise VerityMismatch("superblock", "the padding after the verity superblock is not zero")


def _comparer(hash_fd: int, layout: TreeLayout, hasher: BlockHasher, level: int,
              area: str) -> Callable[[int, bytes], None]:
    """An emit() that compares computed hash blocks of `level` with the stored ones."""
    hbs = layout.hash_block_size
    base = layout.level_offset(level)
    entry = hasher.params.entry_size

    def compare(first: int, packed: bytes) -> None:
        stored = os.pread(hash_fd, len(packed), base + first * hbs)
        if stored == packed:
            return
        at = _first_difference(stored, packed)
        block_in_level, offset_in_block = divmod(at, hbs)
        source = (first + block_in_level) * hasher.per_block + offset_in_block // entry
        if area == "data":
            raise VerityMismatch("data", f"data block {source} does not match the hash tree "
                                         f"(the data was modified)")
        raise VerityMismatch("hash", f"hash tree block {source} of level {level - 1} does not match "
                                     f"its parent (the hash tree was modified)")

    return compare


def _first_difference(a: bytes, b: bytes) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):  # lengths may differ: see below
        if x != y:
            return i
    return min(len(a), len(b))  # one is a prefix of the other: the device ended early
