"""Build a dm-verity hash area byte-identical to `veritysetup format` for the same salt/UUID."""
from __future__ import annotations

import os
from dataclasses import dataclass

from weft.verity.hashing import BlockHasher, default_workers, hash_level
from weft.verity.params import SUPERBLOCK_SIZE, TreeLayout, VerityError, VerityParams, compute_layout
from weft.verity.superblock import encode_superblock


@dataclass(frozen=True)
class FormatResult:
    root_hash: bytes
    params: VerityParams
    layout: TreeLayout
    hash_offset: int

    @property
    def hash_area_size(self) -> int:
        """Bytes from the hash offset to the end of the tree (superblock included)."""
        return self.layout.end_offset - self.hash_offset


def data_blocks_of(data_path: str | os.PathLike[str], params: VerityParams,
                   data_blocks: int | None, same_file_hash_offset: int | None) -> int:
    """How many data blocks to protect: given, else all complete blocks before the hash area."""
    if data_blocks is not None:
        return data_blocks
    size = device_size(data_path)
    if same_file_hash_offset is not None:
        size = min(size, same_file_hash_offset)
    return size // params.data_block_size


def device_size(path: str | os.PathLike[str]) -> int:
    """Size of a file or block device (stat reports 0 for block devices)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise VerityError(f"cannot open {os.fspath(path)}: {exc.strerror}") from None
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_no_overlap(data_blocks: int, params: VerityParams, hash_offset: int, shared: bool) -> None:
    if shared and data_blocks * params.data_block_size > hash_offset:
        raise VerityError(f"data area ({data_blocks} blocks of {params.data_block_size} bytes) "
                          f"overlaps the hash area at offset {hash_offset}")


def format_hash(data_path: str | os.PathLike[str], hash_path: str | os.PathLike[str],
                params: VerityParams, *, data_blocks: int | None = None, hash_offset: int = 0,
                workers: int | None = None) -> FormatResult:
    """Write superblock (optional) and hash tree for `data_path` into `hash_path` at `hash_offset`.

    `hash_path` may be the data file itself (hash area after the data); it is never truncated.
    """
    shared = same_file(data_path, hash_path)
    count = data_blocks_of(data_path, params, data_blocks, hash_offset if shared else None)
    check_no_overlap(count, params, hash_offset, shared)
    layout = compute_layout(params, count, hash_offset)
    available = device_size(data_path) // params.data_block_size
    if count > available:
        raise VerityError(f"data device holds {available} blocks of {params.data_block_size} bytes, "
                          f"{count} requested")
    try:
        return _format(data_path, hash_path, params, layout, hash_offset, workers or default_workers())
    except OSError as exc:
        raise VerityError(f"I/O error while formatting: {exc.strerror or exc}") from None


def _format(data_path: str | os.PathLike[str], hash_path: str | os.PathLike[str], params: VerityParams,
            layout: TreeLayout, hash_offset: int, workers: int) -> FormatResult:
    hasher = BlockHasher(params)
    try:
        data_fd = os.open(data_path, os.O_RDONLY)
    except OSError as exc:
        raise VerityError(f"cannot open data device {os.fspath(data_path)}: {exc.strerror}") from None
    try:
        try:
            hash_fd = os.open(hash_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise VerityError(f"cannot open hash device {os.fspath(hash_path)}: {exc.strerror}") from None
        try:
            if params.superblock:
                header = encode_superblock(params, layout.data_blocks)
                gap = layout.tree_offset - hash_offset - SUPERBLOCK_SIZE
                os.pwrite(hash_fd, header + bytes(gap), hash_offset)
            root = _write_tree(data_fd, hash_fd, params, layout, hasher, workers)
        finally:
            os.close(hash_fd)
    finally:
        os.close(data_fd)
    return FormatResult(root_hash=root, params=params, layout=layout, hash_offset=hash_offset)


def _write_tree(data_fd: int, hash_fd: int, params: VerityParams, layout: TreeLayout,
                hasher: BlockHasher, workers: int) -> bytes:
    if layout.levels == 0:  # a single data block: its digest is the root hash
        block = os.pread(data_fd, params.data_block_size, 0)
        if len(block) != params.data_block_size:
            raise VerityError("data device ends early")
        return hasher.digest(block)
    hbs = params.hash_block_size
    for level in range(layout.levels):
        base = layout.level_offset(level)

        def emit(first: int, packed: bytes, base: int = base) -> None:
            os.pwrite(hash_fd, packed, base + first * hbs)

        if level == 0:
            hash_level(data_fd, 0, params.data_block_size, layout.data_blocks, hasher, emit, workers)
        else:
            hash_level(hash_fd, layout.level_offset(level - 1), hbs, layout.level_blocks[level - 1],
                       hasher, emit, workers)
    top = os.pread(hash_fd, hbs, layout.level_offset(layout.levels - 1))
    return hasher.digest(top)
