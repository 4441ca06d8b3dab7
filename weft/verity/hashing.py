"""Hashing blocks and packing their digests into hash blocks, level by level, in parallel.

Speed matters (the benchmark compares with veritysetup), so the inner loop is a bare
`copy(); update(memoryview slice); digest()` over a large reused read buffer, and disjoint
ranges of a level run in forked worker processes (weft.verity.parallel).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from functools import partial

from weft.verity.parallel import run_tasks
from weft.verity.params import VerityError, VerityParams

READ_CHUNK_BYTES = 8 << 20  # per worker; bounds memory whatever the device size
PARALLEL_MIN_BYTES = 32 << 20  # below this, forking costs more than it saves

# Receives (index of the first hash block within the level, the packed hash blocks).
Emit = Callable[[int, bytes], None]


class BlockHasher:
    """Salted digests of blocks and their packing into zero-padded hash blocks."""

    def __init__(self, params: VerityParams):
        self.params = params
        self.per_block = params.hashes_per_block
        self._pad = bytes(params.entry_size - params.digest_size)
        base = hashlib.new(params.hash_name)
        if params.hash_type == 1:  # format 1 hashes salt + block, format 0 block + salt
            base.update(params.salt)
        self._base = base

    def digest(self, block: bytes | memoryview) -> bytes:
        return self.digests(memoryview(block), len(block))[0]

    def digests(self, buffer: memoryview, block_size: int) -> list[bytes]:
        copy = self._base.copy
        out: list[bytes] = []
        append = out.append
        if self.params.hash_type == 1:
            for offset in range(0, len(buffer), block_size):
                h = copy()
                h.update(buffer[offset:offset + block_size])
                append(h.digest())
        else:
            salt = self.params.salt
            for offset in range(0, len(buffer), block_size):
                h = copy()
                h.update(buffer[offset:offset + block_size])
                h.update(salt)
                append(h.digest())
        return out

    def pack(self, digests: list[bytes]) -> bytes:
        """Hash blocks holding `digests` in order; unused space is zero."""
        size = self.params.hash_block_size
        pad = self._pad
        blocks = []
        for start in range(0, len(digests), self.per_block):
            group = digests[start:start + self.per_block]
            body = pad.join(group) + pad if pad else b"".join(group)
            blocks.append(body.ljust(size, b"\0"))
        return b"".join(blocks)


def hash_level(source_fd: int, source_offset: int, block_size: int, block_count: int,
               hasher: BlockHasher, emit: Emit, workers: int) -> None:
    """Hash `block_count` blocks read from `source_fd` and emit the packed hash blocks.

    The level is cut into one contiguous range per worker, each a multiple of a hash
    block's worth of digests, so workers never share a hash block.
    """
    per = hasher.per_block
    if block_count * block_size < PARALLEL_MIN_BYTES:
        workers = 1
    share = -(-block_count // workers)
    share = -(-share // per) * per
    ranges = [(start, min(share, block_count - start)) for start in range(0, block_count, share)]
    run_tasks([partial(_hash_range, source_fd, source_offset, block_size, start, count, hasher, emit)
               for start, count in ranges])


def _hash_range(source_fd: int, source_offset: int, block_size: int, first: int, count: int,
                hasher: BlockHasher, emit: Emit) -> None:
    per = hasher.per_block
    chunk_blocks = max(per, READ_CHUNK_BYTES // block_size // per * per)
    buffer = bytearray(min(count, chunk_blocks) * block_size)  # reused: no allocation per read
    view = memoryview(buffer)
    for start in range(first, first + count, chunk_blocks):
        want = min(chunk_blocks, first + count - start) * block_size
        offset = source_offset + start * block_size
        got = os.preadv(source_fd, [view[:want]], offset)
        if got != want:
            raise VerityError(f"device ends early: cannot read {want} bytes at offset {offset}")
        emit(start // per, hasher.pack(hasher.digests(view[:want], block_size)))


def default_workers() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0))))
