"""Tampering with files in place, for the tests that prove a changed byte is caught."""
from __future__ import annotations

import os
from pathlib import Path


def flip_byte(path: str | os.PathLike[str], offset: int, mask: int = 0x01) -> None:
    """XOR the byte at `offset` with `mask` (default: its lowest bit)."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ mask]))


def flip_bit(path: Path, bit: int) -> None:
    """Flip one bit, counted from the start of the file."""
    flip_byte(path, bit // 8, 1 << (bit % 8))
