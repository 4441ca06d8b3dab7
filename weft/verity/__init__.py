"""dm-verity in pure Python: hash trees byte-identical to `veritysetup format`, and verification."""
from weft.verity.format import FormatResult, format_hash
from weft.verity.params import TreeLayout, VerityError, VerityMismatch, VerityParams, compute_layout
from weft.verity.superblock import Superblock, decode_superblock, encode_superblock
from weft.verity.verify import read_superblock, verify_hash

__all__ = [
    "FormatResult", "Superblock", "TreeLayout", "VerityError", "VerityMismatch", "VerityParams",
    "compute_layout", "decode_superblock", "encode_superblock", "format_hash", "read_superblock",
    "verify_hash",
]
