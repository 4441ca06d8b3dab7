"""`.wapp` app images: reproducible builds, full verification, precise failure names, fuzzed footer."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tamper_support import flip_byte

from weft.pack.footer import (
    TRAILER,
    Footer,
    FooterError,
    FooterSignatureError,
    VerityInfo,
    load_trusted_keys,
    parse_footer,
    read_footer,
    seal_footer,
    verify_footer_signature,
)
from weft.pack.image import ImageError, build_image, image_uuid, verify_image
from weft.pack.keys import key_id, load_signing_key, load_verify_key
from weft.pack.tree import walk_package
from weft.verity import VerityParams, compute_layout
from weft.verity.erofs import ErofsError, read_erofs_file


def _quiet(_message: str) -> None:
    pass


@pytest.fixture
def image(make_package, keypair, tmp_path):
    package = make_package(files={"assets/blob.bin": os.urandom(300_000), "bin/tool": b"#!/bin/sh\n"})
    os.chmod(package / "bin" / "tool", 0o755)
    return build_image(package, load_signing_key(keypair[0]), tmp_path / "out" / "com.example.notes-1.0.0.wapp",
                       progress=_quiet)


@pytest.fixture
def trusted(keypair):
    return [load_verify_key(keypair[1])]


def _patch(path, offset, data: bytes):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def test_image_verifies_and_has_the_documented_layout(image, trusted):
    signed = verify_image(image, trusted)
    f = signed.footer
    assert (f.app_id, f.version) == ("com.example.notes", "1.0.0")
    assert f.data_size % 4096 == 0 and f.verity.hash_offset == f.data_size
    assert f.verity.uuid == str(image_uuid("com.example.notes", "1.0.0"))
    raw = image.read_bytes()
    assert raw[1024:1028] == bytes.fromhex("e2e1f5e0")  # EROFS superblock magic at 1 KiB
    assert raw[f.data_size:f.data_size + 8] == b"verity\0\0"
    assert raw[-TRAILER.size:-8] == b"WEFTWAPP"
    assert f.footer_offset + len(signed.body) + 64 + TRAILER.size == len(raw)


def test_veritysetup_accepts_the_embedded_hash_tree(image):
    f = read_footer(image).footer
    subprocess.run(["veritysetup", "verify", str(image), str(image), f.verity.root_hash,
                    f"--hash-offset={f.verity.hash_offset}"], check=True, capture_output=True)


def test_two_builds_are_byte_identical(make_package, keypair, tmp_path):
    package = make_package(files={"data/a.txt": b"a" * 10_000})
    key = load_signing_key(keypair[0])
    first = build_image(package, key, tmp_path / "1.wapp", progress=_quiet)
    os.utime(package / "data" / "a.txt", (0, 0))  # mtimes, staging dirs and umask must not matter
    os.umask(0o077)
    try:
        second = build_image(package, key, tmp_path / "2.wapp", progress=_quiet)
    finally:
        os.umask(0o022)
    assert first.read_bytes() == second.read_bytes()


def test_refuses_overwrite_unless_forced(image, keypair, make_package, trusted):
    package = make_package(version="1.0.0")
    key = load_signing_key(keypair[0])
    with pytest.raises(ImageError, match="already exists"):
        build_image(package, key, image, progress=_quiet)
    build_image(package, key, image, force=True, progress=_quiet)
    verify_image(image, trusted)


def test_build_runs_check_first(make_package, keypair, tmp_path):
    package = make_package()
    (package / "ui" / "index.html").unlink()
    with pytest.raises(Exception, match=re.escape("ui.entry 'ui/index.html' not found")):
        build_image(package, load_signing_key(keypair[0]), tmp_path / "x.wapp", progress=_quiet)
    assert not (tmp_path / "x.wapp").exists()


def test_wrong_key(image, other_keypair):
    with pytest.raises(FooterSignatureError, match="wrong key"):
        verify_image(image, [load_verify_key(other_keypair[1])])


def test_bad_signature(image, trusted):
    signed = read_footer(image)
    flip_byte(image, signed.file_size - TRAILER.size - 10)  # inside the signature
    with pytest.raises(FooterSignatureError, match="bad signature"):
        verify_image(image, trusted)


def test_edited_footer_fails_the_signature(image, trusted):
    signed = read_footer(image)
    root = signed.footer.verity.root_hash
    forged = signed.body.replace(root.encode(), ("0" * 64).encode())
    _patch(image, signed.footer.footer_offset, forged)
    with pytest.raises(FooterSignatureError, match="bad signature"):
        verify_image(image, trusted)


def test_truncated(image, trusted):
    os.truncate(image, image.stat().st_size - 1)
    with pytest.raises(FooterError, match="truncated"):
        verify_image(image, trusted)


def test_truncated_in_the_middle(image, trusted):
    raw = image.read_bytes()
    footer = read_footer(image).footer
    image.write_bytes(raw[:footer.data_size - 4096] + raw[footer.footer_offset:])
    with pytest.raises(FooterError, match="truncated"):
        verify_image(image, trusted)


def test_tampered_data(image, trusted):
    flip_byte(image, 4096 * 3 + 17)
    with pytest.raises(ImageError, match="tampered data: data block 3 "):
        verify_image(image, trusted)


def test_tampered_hash_tree(image, trusted):
    footer = read_footer(image).footer
    flip_byte(image, footer.verity.hash_offset + 4096 + 5)  # first tree block, after the superblock
    with pytest.raises(ImageError, match="tampered hash tree"):
        verify_image(image, trusted)


def test_tampered_superblock(image, trusted):
    footer = read_footer(image).footer
    flip_byte(image, footer.verity.hash_offset + 100)
    with pytest.raises(ImageError, match="tampered hash tree"):
        verify_image(image, trusted)


def test_mismatched_id(image, trusted, tmp_path):
    with pytest.raises(ImageError, match="mismatched id"):
        verify_image(image, trusted, expected_app_id="com.example.other")
    renamed = tmp_path / "com.example.other-1.0.0.wapp"
    shutil.copyfile(image, renamed)
    with pytest.raises(ImageError, match="mismatched id"):
        verify_image(renamed, trusted)


def _reseal(image, keypair, **changes):
    """Re-sign the image with a footer changed by the publisher's own key."""
    signed = read_footer(image)
    footer = signed.footer.model_copy(update=changes)
    raw = image.read_bytes()[:signed.footer.footer_offset]
    image.write_bytes(raw + seal_footer(footer, load_signing_key(keypair[0])))


def test_signed_footer_naming_another_app_is_caught_by_the_inner_manifest(image, keypair, trusted, tmp_path):
    image = image.rename(tmp_path / "plain-name.img")  # so the file-name check stays out of the way
    _reseal(image, keypair, app_id="com.example.other")
    with pytest.raises(ImageError, match=re.escape("mismatched id: the footer says com.example.other 1.0.0, "
                                                   "the manifest inside says com.example.notes 1.0.0")):
        verify_image(image, trusted)


def test_signed_footer_with_another_manifest_digest_is_caught(image, keypair, trusted):
    _reseal(image, keypair, manifest_sha256="0" * 64)
    with pytest.raises(ImageError, match="manifest digest"):
        verify_image(image, trusted)


def test_every_package_file_reads_back_from_the_image(make_package, keypair, tmp_path):
    files = {f"many/f{i}.txt": str(i).encode() for i in range(250)}  # a multi-block directory
    files |= {"assets/exact.bin": os.urandom(8192), "assets/tail.bin": os.urandom(10_001)}
    package = make_package(files=files)
    image = build_image(package, load_signing_key(keypair[0]), tmp_path / "r.wapp", progress=_quiet)
    size = read_footer(image).footer.data_size
    for f in walk_package(package):
        assert read_erofs_file(image, f.rel, image_size=size) == f.reader().read(), f.rel
    with pytest.raises(ErofsError, match="not found"):
        read_erofs_file(image, "missing.txt", image_size=size)
    with pytest.raises(ErofsError, match="not an EROFS image"):
        read_erofs_file(package / "app.wasm", "wapp.toml")
    with pytest.raises(ErofsError, match="not an EROFS image"):
        read_erofs_file(package / "assets" / "tail.bin", "wapp.toml")


def test_not_an_image(tmp_path, trusted):
    (tmp_path / "x.wapp").write_bytes(os.urandom(10_000))
    with pytest.raises(FooterError, match=re.escape("not a .wapp")):
        verify_image(tmp_path / "x.wapp", trusted)


def test_shared_sample_image_fixture_verifies(sample_image, trusted):
    assert verify_image(sample_image, trusted).footer.app_id == "com.example.notes"


def test_trusted_key_directory(image, keypair, other_keypair, tmp_path):
    keydir = tmp_path / "trusted"
    keydir.mkdir()
    shutil.copy(other_keypair[1], keydir / "other.pub")
    shutil.copy(keypair[1], keydir / "publisher.pub")
    key = verify_footer_signature(read_footer(image), load_trusted_keys(keydir))
    assert bytes(key) == bytes(load_verify_key(keypair[1]))


@settings(max_examples=400, deadline=None)
@given(body=st.binary(max_size=600) | st.text(max_size=300).map(str.encode))
def test_fuzz_footer_parser(body):
    with pytest.raises(FooterError):
        parse_footer(body)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_mutated_footers(image, trusted, tmp_path, data):
    raw = bytearray(image.read_bytes())
    signed = read_footer(image)
    tail_start = signed.footer.footer_offset
    body = json.loads(signed.body)
    key = data.draw(st.sampled_from(sorted(body) + sorted(f"verity.{k}" for k in body["verity"])))
    value = data.draw(st.one_of(st.integers(-2, 2**65), st.text(max_size=70), st.none(), st.booleans()))
    target = body["verity"] if key.startswith("verity.") else body
    target[key.removeprefix("verity.")] = value
    new_body = json.dumps(body).encode()
    trailer = TRAILER.pack(b"WEFTWAPP", 1, len(new_body))
    mutated = tmp_path / "m.wapp"
    mutated.write_bytes(bytes(raw[:tail_start]) + new_body + signed.signature + trailer)
    with pytest.raises((FooterError, FooterSignatureError)):
        verify_image(mutated, trusted)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_erofs_reader(image, tmp_path, data):
    size = read_footer(image).footer.data_size
    raw = bytearray(image.read_bytes()[:size])
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(1024, min(size, 3 * 4096) - 1))  # superblock, inodes, directories
        raw[at] = data.draw(st.integers(0, 255))
    (tmp_path / "fuzz.img").write_bytes(bytes(raw))
    with contextlib.suppress(ErofsError):
        read_erofs_file(tmp_path / "fuzz.img", data.draw(st.sampled_from(["wapp.toml", "ui/index.html", "a/b"])))


def test_footer_is_read_from_the_tail_only(tmp_path, keypair, trusted):
    """A 16 GiB sparse image: reading it whole would not finish; the footer check is instant."""
    blocks = (16 << 30) // 4096
    salt = bytes(32)
    layout = compute_layout(VerityParams(salt=salt), blocks, blocks * 4096)
    footer = Footer(app_id="com.example.huge", version="1", manifest_sha256="0" * 64, data_size=blocks * 4096,
                    key_id=key_id(trusted[0]),
                    verity=VerityInfo(data_blocks=blocks, hash_offset=blocks * 4096, salt=salt.hex(),
                                      hash_size=layout.end_offset - blocks * 4096, root_hash="0" * 64,
                                      uuid="00000000-0000-0000-0000-000000000000"))
    huge = tmp_path / "huge.wapp"
    with open(huge, "wb") as fh:
        fh.truncate(footer.footer_offset)
        fh.seek(footer.footer_offset)
        fh.write(seal_footer(footer, load_signing_key(keypair[0])))
    signed = read_footer(huge)
    verify_footer_signature(signed, trusted)
    assert signed.footer.verity.data_blocks == blocks


@settings(max_examples=300, deadline=None)
@given(tail=st.binary(max_size=300), length=st.integers(0, 2**32 - 1), version=st.sampled_from([0, 1, 2]))
def test_fuzz_raw_tails(tmp_path_factory, tail, length, version):
    path = tmp_path_factory.mktemp("tail") / "x.wapp"
    path.write_bytes(tail + TRAILER.pack(b"WEFTWAPP", version, length))
    with pytest.raises(FooterError):
        read_footer(path)
