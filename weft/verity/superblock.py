"""The 512-byte dm-verity superblock (cryptsetup's `struct verity_sb`), little-endian."""
from __future__ import annotations

import struct
import uuid as uuidlib
from dataclasses import dataclass

from weft.verity.params import SUPERBLOCK_SIZE, VerityError, VerityParams

SIGNATURE = b"verity\0\0"
SUPERBLOCK_VERSION = 1
# signature, version, hash_type, uuid, algorithm, data_block_size, hash_block_size,
# data_blocks, salt_size, pad1, salt, pad2
_LAYOUT = struct.Struct("<8sII16s32sIIQH6s256s168s")
assert _LAYOUT.size == SUPERBLOCK_SIZE


@dataclass(frozen=True)
class Superblock:
    params: VerityParams
    data_blocks: int


def encode_superblock(params: VerityParams, data_blocks: int) -> bytes:
    return _LAYOUT.pack(SIGNATURE, SUPERBLOCK_VERSION, params.hash_type, params.uuid.bytes,
                        params.hash_name.encode(), params.data_block_size, params.hash_block_size,
                        data_blocks, len(params.salt), b"", params.salt, b"")


def decode_superblock(raw: bytes) -> Superblock:
    """Parse a superblock; any malformed field is a VerityError, never another exception."""
    if len(raw) < SUPERBLOCK_SIZE:
        raise VerityError("hash device too small for a verity superblock")
    (signature, version, hash_type, uuid_bytes, algorithm, data_bs, hash_bs, data_blocks,
     salt_size, _pad1, salt, _pad2) = _LAYOUT.unpack(raw[:SUPERBLOCK_SIZE])
    if signature != SIGNATURE:
        raise VerityError("no verity superblock (bad signature)")
    if version != SUPERBLOCK_VERSION:
        raise VerityError(f"unsupported verity superblock version {version}")
    if salt_size > len(salt):
        raise VerityError(f"superblock salt size {salt_size} is too large")
    name = algorithm.rstrip(b"\0")
    try:
        hash_name = name.decode("ascii").lower()
    except UnicodeDecodeError:
        raise VerityError("superblock hash algorithm is not ASCII") from None
    params = VerityParams(salt=salt[:salt_size], hash_name=hash_name, data_block_size=data_bs,
                          hash_block_size=hash_bs, hash_type=hash_type, superblock=True,
                          uuid=uuidlib.UUID(bytes=uuid_bytes))
    if data_blocks < 1:
        raise VerityError("superblock declares no data blocks")
    return Superblock(params=params, data_blocks=data_blocks)
