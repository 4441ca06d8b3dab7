"""The verity core on its own: layout, tamper detection, bounded memory, bad input."""
from __future__ import annotations

import contextlib
import os
import tracemalloc
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tamper_support import flip_bit

from weft.verity import (
    VerityError,
    VerityMismatch,
    VerityParams,
    compute_layout,
    decode_superblock,
    encode_superblock,
    format_hash,
    hashing,
    verify_hash,
)

SMALL = VerityParams(salt=bytes(range(32)), data_block_size=512, hash_block_size=512,
                     uuid=uuid.UUID(int=7))
DATA_BLOCKS = 20  # 16 digests per 512-byte hash block: 20 -> 2 -> 1, so two tree levels


@pytest.fixture
def small_tree(tmp_path):
    data = tmp_path / "data"
    data.write_bytes(os.urandom(512 * DATA_BLOCKS))
    result = format_hash(data, tmp_path / "hash", SMALL, workers=1)
    assert result.layout.levels == 2
    return data, tmp_path / "hash", result.root_hash


def _verify(data, hash_path, root):
    verify_hash(data, hash_path, root, SMALL, data_blocks=DATA_BLOCKS, workers=1)


def test_untouched_tree_verifies(small_tree):
    _verify(*small_tree)


@pytest.mark.parametrize("which", ["data", "hash"])
def test_every_flipped_bit_is_rejected(small_tree, which):
    data, hash_path, root = small_tree
    target = data if which == "data" else hash_path
    size = target.stat().st_size
    for byte in range(size):
        bit = byte * 8 + byte % 8  # one bit in every byte, each bit position equally often
        flip_bit(target, bit)
        with pytest.raises(VerityMismatch):
            _verify(data, hash_path, root)
        flip_bit(target, bit)


def test_mismatch_names_the_part_that_changed(small_tree):
    data, hash_path, root = small_tree
    flip_bit(data, 512 * 8 * 13 + 5)
    with pytest.raises(VerityMismatch, match="data block 13 ") as info:
        _verify(data, hash_path, root)
    assert info.value.area == "data"
    flip_bit(data, 512 * 8 * 13 + 5)
    level0 = compute_layout(SMALL, DATA_BLOCKS).level_offset(0)
    flip_bit(hash_path, level0 * 8 + 3)
    with pytest.raises(VerityMismatch) as info:
        _verify(data, hash_path, root)
    assert info.value.area == "hash"
    flip_bit(hash_path, level0 * 8 + 3)
    with pytest.raises(VerityMismatch) as info:
        _verify(data, hash_path, bytes(32))
    assert info.value.area == "root"


def test_truncated_hash_device_is_named(small_tree):
    data, hash_path, root = small_tree
    os.truncate(hash_path, hash_path.stat().st_size - 1)
    with pytest.raises(VerityMismatch, match="truncated"):
        _verify(data, hash_path, root)


def test_layout_matches_cryptsetup_arithmetic():
    layout = compute_layout(VerityParams(salt=b""), 65536)
    assert layout.level_blocks == (512, 4, 1)
    assert layout.level_start == (5, 1, 0)  # top level first, level 0 last
    assert layout.tree_offset == 4096  # superblock padded to one hash block


def test_forked_workers_and_a_single_process_agree(tmp_path, monkeypatch):
    monkeypatch.setattr(hashing, "READ_CHUNK_BYTES", 64 * 1024)
    monkeypatch.setattr(hashing, "PARALLEL_MIN_BYTES", 0)
    data = tmp_path / "data"
    data.write_bytes(os.urandom(4096 * 700))
    params = VerityParams(salt=b"s", uuid=uuid.UUID(int=1))
    one = format_hash(data, tmp_path / "one", params, workers=1)
    four = format_hash(data, tmp_path / "four", params, workers=4)
    assert one.root_hash == four.root_hash
    assert (tmp_path / "one").read_bytes() == (tmp_path / "four").read_bytes()
    verify_hash(data, tmp_path / "four", four.root_hash, params, data_blocks=700, workers=4)
    flip_bit(data, 4096 * 8 * 650 + 1)  # in the last worker's range: the child reports it
    with pytest.raises(VerityMismatch, match="data block 650 ") as info:
        verify_hash(data, tmp_path / "four", four.root_hash, params, data_blocks=700, workers=4)
    assert info.value.area == "data"


def test_memory_stays_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(hashing, "READ_CHUNK_BYTES", 256 * 1024)
    data = tmp_path / "sparse"
    with open(data, "wb") as fh:
        fh.truncate(64 << 20)
    tracemalloc.start()
    try:
        format_hash(data, tmp_path / "hash", VerityParams(salt=b""), workers=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # 64 MiB of data, a few read chunks in memory


def test_parameters_are_validated():
    with pytest.raises(VerityError, match="block size"):
        VerityParams(salt=b"", data_block_size=8192)
    with pytest.raises(VerityError, match="hash"):
        VerityParams(salt=b"", hash_name="md5")
    with pytest.raises(VerityError, match="salt"):
        VerityParams(salt=bytes(257))
    with pytest.raises(VerityError, match="multiple"):
        compute_layout(VerityParams(salt=b"", superblock=False), 10, hash_offset=100)


def test_superblock_round_trip():
    raw = encode_superblock(SMALL, 1234)
    decoded = decode_superblock(raw)
    assert decoded.params == SMALL and decoded.data_blocks == 1234


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(min_size=0, max_size=600), patch=st.binary(min_size=1, max_size=64),
       at=st.integers(0, 511))
def test_superblock_parser_fuzz(raw, patch, at):
    for candidate in (raw, bytearray(encode_superblock(SMALL, 5))):
        if isinstance(candidate, bytearray):
            candidate[at:at + len(patch)] = patch
            candidate = bytes(candidate[:512])
        with contextlib.suppress(VerityError):
            decode_superblock(candidate)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.binary(min_size=0, max_size=3000), root=st.binary(min_size=0, max_size=40),
       blocks=st.integers(-2, 30))
def test_verifier_fuzz_never_crashes(tmp_path, garbage, root, blocks):
    data, hash_path = tmp_path / "fd", tmp_path / "fh"
    data.write_bytes(garbage[: len(garbage) // 2])
    hash_path.write_bytes(garbage[len(garbage) // 2:])
    with pytest.raises(VerityError):
        verify_hash(data, hash_path, root, SMALL, data_blocks=blocks, workers=1)
