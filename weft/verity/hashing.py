"""Hashing blocks and packing their digests into hash blocks, level by level, in parallel.

Speed matters (the benchmark compares with veritysetup), so the inner loop is a bare
`copy(); update(memoryview slice); digest()` over a large read, and disjoint spans of a
level run on threads: hashlib releases the GIL for inputs over 2047 bytes.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from weft.verity.params import VerityError, VerityParams

READ_CHUNK_BYTES = 8 << 20  # per worker; bounds memory whatever the device size

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

    Spans are multiples of a hash block's worth of digests, so every emit covers whole
    hash blocks and workers never share one.
    """
    per = hasher.per_block
    span_blocks = max(per, READ_CHUNK_BYTES // block_size // per * per)
    spans = [(start, min(span_blocks, block_count - start)) for start in range(0, block_count, span_blocks)]

    def work(span: tuple[int, int]) -> None:
        start, count = span
        want = count * block_size
        raw = os.pread(source_fd, want, source_offset + start * block_size)
        if len(raw) != want:
            raise VerityError(f"device ends early: cannot read {want} bytes at offset "
                              f"{source_offset + start * block_size}")
        emit(start // per, hasher.pack(hasher.digests(memoryview(raw), block_size)))

    if workers > 1 and len(spans) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(work, spans):
                pass
    else:
        for span in spans:
            work(span)


def default_workers() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0))))
