"""Our hash areas against the real `veritysetup` (cryptsetup-bin): byte-identical, and accepted."""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from weft.verity import VerityParams, format_hash, read_superblock, verify_hash

UUID = uuid.UUID("0f2f1d6e-3b0a-4e55-9d6c-1a2b3c4d5e6f")

# (hash, format, data block, hash block, superblock, salt bytes, data blocks)
MATRIX = [
    ("sha256", 1, 4096, 4096, True, 32, 300),
    ("sha256", 1, 4096, 4096, False, 32, 1),
    ("sha256", 1, 512, 512, True, 32, 300),
    ("sha256", 0, 512, 1024, True, 16, 257),
    ("sha256", 1, 1024, 512, False, 0, 33),
    ("sha1", 1, 512, 512, True, 32, 129),
    ("sha1", 0, 512, 512, False, 7, 129),
    ("sha1", 0, 2048, 4096, True, 256, 40),
    ("sha512", 1, 512, 512, True, 64, 70),
    ("sha512", 0, 4096, 2048, False, 32, 65),
    ("sha512", 1, 2048, 1024, True, 1, 17),
]


def _veritysetup(*args: str) -> str:
    proc = subprocess.run(["veritysetup", *args], capture_output=True, text=True, check=True)
    return proc.stdout


def _root_of(stdout: str) -> str:
    return next(line.split()[-1] for line in stdout.splitlines() if line.startswith("Root hash:"))


def _options(p: VerityParams) -> list[str]:
    opts = [f"--hash={p.hash_name}", f"--format={p.hash_type}", f"--data-block-size={p.data_block_size}",
            f"--hash-block-size={p.hash_block_size}", f"--salt={p.salt.hex() or '-'}"]
    return opts + (["--no-superblock"] if not p.superblock else [f"--uuid={p.uuid}"])


@pytest.mark.parametrize("hash_name,fmt,dbs,hbs,sb,salt_len,blocks", MATRIX)
def test_hash_area_is_byte_identical_to_veritysetup(tmp_path, hash_name, fmt, dbs, hbs, sb, salt_len, blocks):
    data = tmp_path / "data"
    data.write_bytes(os.urandom(dbs * blocks))
    params = VerityParams(salt=os.urandom(salt_len), hash_name=hash_name, data_block_size=dbs,
                          hash_block_size=hbs, hash_type=fmt, superblock=sb, uuid=UUID)
    ours = format_hash(data, tmp_path / "ours", params)
    theirs = _veritysetup("format", *_options(params), str(data), str(tmp_path / "theirs"))
    assert (tmp_path / "ours").read_bytes() == (tmp_path / "theirs").read_bytes()
    assert ours.root_hash.hex() == _root_of(theirs)
    _veritysetup("verify", *_options(params), str(data), str(tmp_path / "ours"), ours.root_hash.hex())


@pytest.mark.parametrize("sb", [True, False])
def test_hash_area_at_an_offset_in_the_data_file(tmp_path, sb):
    blocks, offset = 200, 200 * 4096 + 8192
    params = VerityParams(salt=bytes(range(32)), superblock=sb, uuid=UUID)
    payload = os.urandom(blocks * 4096)
    ours, theirs = tmp_path / "ours.img", tmp_path / "theirs.img"
    ours.write_bytes(payload)
    theirs.write_bytes(payload)
    result = format_hash(ours, ours, params, hash_offset=offset)
    _veritysetup("format", *_options(params), f"--hash-offset={offset}", f"--data-blocks={blocks}",
                 str(theirs), str(theirs))
    assert ours.read_bytes() == theirs.read_bytes()
    _veritysetup("verify", *_options(params), f"--hash-offset={offset}", f"--data-blocks={blocks}",
                 str(ours), str(ours), result.root_hash.hex())
    verify_hash(ours, ours, result.root_hash, params, data_blocks=blocks, hash_offset=offset)


def test_veritysetup_trees_pass_our_verify(tmp_path):
    data = tmp_path / "data"
    data.write_bytes(os.urandom(4096 * 150))
    root = bytes.fromhex(_root_of(_veritysetup("format", str(data), str(tmp_path / "hash"))))
    sb = read_superblock(tmp_path / "hash")
    verify_hash(data, tmp_path / "hash", root, sb.params, data_blocks=sb.data_blocks)
