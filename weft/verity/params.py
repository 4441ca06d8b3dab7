"""dm-verity parameters and the geometry of the hash tree, as cryptsetup lays it out.

The layout mirrors cryptsetup's lib/verity/verity_hash.c: the tree's top level is stored
first and level 0 (the hashes of the data blocks) last; each level's hash blocks hold
2**floor(log2(hash_block_size / digest_size)) digests, zero-padded.
"""
from __future__ import annotations

import hashlib
import uuid as uuidlib
from dataclasses import dataclass, field

from weft.errors import WeftError

SUPERBLOCK_SIZE = 512
HASH_ALGORITHMS = ("sha1", "sha256", "sha512")
BLOCK_SIZES = (512, 1024, 2048, 4096)
MAX_SALT_SIZE = 256
MAX_LEVELS = 63


class VerityError(WeftError):
    """Bad parameters, an unreadable device, or a hash tree that does not match."""


class VerityMismatch(VerityError):
    """The bytes on disk do not match; `area` says which part is wrong:
    "superblock", "root", "hash" (a tree block), "data" or "size" (truncated)."""

    def __init__(self, area: str, message: str):
        self.area = area
        super().__init__(message)


@dataclass(frozen=True)
class VerityParams:
    """Everything that determines the bytes of a hash area (what veritysetup's options set)."""

    salt: bytes
    hash_name: str = "sha256"
    data_block_size: int = 4096
    hash_block_size: int = 4096
    hash_type: int = 1
    superblock: bool = True
    uuid: uuidlib.UUID = field(default_factory=uuidlib.uuid4)

    def __post_init__(self) -> None:
        if self.hash_name not in HASH_ALGORITHMS:
            raise VerityError(f"unsupported hash '{self.hash_name}' (use one of {', '.join(HASH_ALGORITHMS)})")
        for label, size in (("data", self.data_block_size), ("hash", self.hash_block_size)):
            if size not in BLOCK_SIZES:
                raise VerityError(f"{label} block size {size} not supported (use 512, 1024, 2048 or 4096)")
        if self.hash_type not in (0, 1):
            raise VerityError(f"verity format {self.hash_type} not supported (use 0 or 1)")
        if len(self.salt) > MAX_SALT_SIZE:
            raise VerityError(f"salt is {len(self.salt)} bytes; at most {MAX_SALT_SIZE} allowed")

    @property
    def digest_size(self) -> int:
        return hashlib.new(self.hash_name).digest_size

    @property
    def entry_size(self) -> int:
        """Bytes one digest occupies in a hash block: format 1 pads to a power of two."""
        if self.hash_type == 0:
            return self.digest_size
        return 1 << (self.digest_size - 1).bit_length()

    @property
    def hashes_per_block(self) -> int:
        return 1 << ((self.hash_block_size // self.digest_size).bit_length() - 1)


@dataclass(frozen=True)
class TreeLayout:
    """Where each level lives, in hash blocks counted from the start of the hash area."""

    data_blocks: int
    tree_offset: int  # byte offset of the first tree block in the hash file
    level_start: tuple[int, ...]  # level i's first block (index 0 = hashes of data blocks)
    level_blocks: tuple[int, ...]
    hash_block_size: int

    @property
    def levels(self) -> int:
        return len(self.level_blocks)

    @property
    def tree_blocks(self) -> int:
        return sum(self.level_blocks)

    @property
    def end_offset(self) -> int:
        """Byte offset just past the hash area in the hash file."""
        return self.tree_offset + self.tree_blocks * self.hash_block_size

    def level_offset(self, level: int) -> int:
        return self.tree_offset + self.level_start[level] * self.hash_block_size


def tree_offset(params: VerityParams, hash_offset: int) -> int:
    """First tree byte: right after the superblock, rounded up to a hash block (cryptsetup)."""
    if hash_offset < 0:
        raise VerityError(f"hash offset {hash_offset} is negative")
    if params.superblock:
        if hash_offset % SUPERBLOCK_SIZE:
            raise VerityError(f"hash offset {hash_offset} must be a multiple of {SUPERBLOCK_SIZE}")
        end = hash_offset + SUPERBLOCK_SIZE
        return -(-end // params.hash_block_size) * params.hash_block_size
    if hash_offset % params.hash_block_size:
        raise VerityError(f"hash offset {hash_offset} must be a multiple of the hash block size "
                          f"{params.hash_block_size} when there is no superblock")
    return hash_offset


def compute_layout(params: VerityParams, data_blocks: int, hash_offset: int = 0) -> TreeLayout:
    if data_blocks < 1:
        raise VerityError("the data device holds no complete data block")
    bits = params.hashes_per_block.bit_length() - 1
    levels = 0
    while bits * levels < 64 and (data_blocks - 1) >> (bits * levels):
        levels += 1
    if levels > MAX_LEVELS:
        raise VerityError("hash tree would be too deep")
    sizes = [-(-data_blocks // (1 << (bits * (i + 1)))) for i in range(levels)]
    starts = [0] * levels
    position = 0
    for i in reversed(range(levels)):
        starts[i] = position
        position += sizes[i]
    return TreeLayout(data_blocks=data_blocks, tree_offset=tree_offset(params, hash_offset),
                      level_start=tuple(starts), level_blocks=tuple(sizes),
                      hash_block_size=params.hash_block_size)
