"""Package signatures: the reference's canonical bundle hash + Ed25519 (§2.5), and key files."""
from __future__ import annotations

import hashlib
import os
import stat

import pytest
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from weft.pack.keys import KeyFileError, generate_keypair, load_signing_key, load_verify_key
from weft.pack.signing import SignatureError, bundle_digest, listing_digest, sign_package, verify_package
from weft.pack.tree import PackageTreeError


def reference_digest(package_dir) -> bytes:
    """An independent re-computation of the scheme, written from the reference text."""
    entries = []
    for dirpath, _dirs, files in os.walk(package_dir, followlinks=True):
        for name in files:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, package_dir)
            if rel == "signature.sig":
                continue
            with open(full, "rb") as fh:
                entries.append((rel, hashlib.sha256(fh.read()).hexdigest()))
    entries.sort(key=lambda e: e[0].encode())
    return hashlib.sha256("".join(f"{rel}\t{h}\n" for rel, h in entries).encode()).digest()


def test_key_files_match_the_reference_format(keypair):
    private, public = keypair
    for path in keypair:
        text = path.read_text()
        assert len(text) == 64 and text == text.strip() and bytes.fromhex(text)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert bytes(SigningKey(bytes.fromhex(private.read_text())).verify_key).hex() == public.read_text()


def test_generate_key_refuses_to_overwrite(keypair):
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keypair(keypair[0].parent)


def test_private_key_readable_by_others_is_refused(keypair):
    os.chmod(keypair[0], 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_signing_key(keypair[0])


def test_readers_trim_whitespace_and_accept_upper_case(keypair):
    keypair[1].write_text(keypair[1].read_text().upper() + "\n")
    load_verify_key(keypair[1])


@pytest.mark.parametrize("content,message", [("zz" * 32, "expected 64 hex chars"), ("ab" * 31, "must be 32 bytes")])
def test_malformed_public_key(tmp_path, content, message):
    (tmp_path / "k.pub").write_text(content)
    with pytest.raises(KeyFileError, match=message):
        load_verify_key(tmp_path / "k.pub")


def test_signature_matches_an_independent_computation(make_package, keypair):
    package = make_package(files={"x/signature.sig": b"nested files are signed", "src/main.rs": b"fn main(){}"})
    (package / "zlink").symlink_to("src/main.rs")
    assert bundle_digest(package) == reference_digest(package)
    path = sign_package(package, load_signing_key(keypair[0]))
    text = path.read_text()
    assert len(text) == 128 and text == text.lower() and not text.endswith("\n")
    # Verified without our code: raw Ed25519 over the independently computed digest.
    VerifyKey(bytes.fromhex(keypair[1].read_text())).verify(reference_digest(package), bytes.fromhex(text))
    verify_package(package, load_verify_key(keypair[1]))
    # Re-signing a signed package gives the same digest: the top-level signature is skipped.
    assert bundle_digest(package) == reference_digest(package)


def test_tampering_or_wrong_key_is_invalid(sample_package, keypair, other_keypair):
    sign_package(sample_package, load_signing_key(keypair[0]))
    with pytest.raises(SignatureError, match="INVALID"):
        verify_package(sample_package, load_verify_key(other_keypair[1]))
    (sample_package / "ui" / "index.html").write_text("changed")
    with pytest.raises(SignatureError, match="INVALID"):
        verify_package(sample_package, load_verify_key(keypair[1]))


def test_new_file_invalidates_signature(sample_package, keypair):
    sign_package(sample_package, load_signing_key(keypair[0]))
    (sample_package / "extra.txt").write_text("added")
    with pytest.raises(SignatureError, match="INVALID"):
        verify_package(sample_package, load_verify_key(keypair[1]))


def test_unsigned_and_malformed_signatures(sample_package, keypair):
    key = load_verify_key(keypair[1])
    with pytest.raises(SignatureError, match="not signed"):
        verify_package(sample_package, key)
    (sample_package / "signature.sig").write_text("xy")
    with pytest.raises(SignatureError, match="expected 128 hex chars"):
        verify_package(sample_package, key)
    (sample_package / "signature.sig").write_text("ab" * 10)
    with pytest.raises(SignatureError, match="64 bytes"):
        verify_package(sample_package, key)


def test_symlink_leaving_the_package_is_refused(sample_package, tmp_path):
    (tmp_path / "secret").write_text("outside")
    (sample_package / "leak").symlink_to(tmp_path / "secret")
    with pytest.raises(PackageTreeError, match="outside the package"):
        bundle_digest(sample_package)


def test_symlink_loop_is_refused(sample_package):
    (sample_package / "ui" / "loop").symlink_to("..")
    with pytest.raises(PackageTreeError, match="loop"):
        bundle_digest(sample_package)


def test_fifo_is_refused(sample_package):
    os.mkfifo(sample_package / "pipe")
    with pytest.raises(PackageTreeError, match="not a regular file"):
        bundle_digest(sample_package)


# The original Rust tool's demo package org.weft.demo.counter (marcoallegretti/WEFT_OS @ b99cc73):
# its files' SHA-256 (in walk order, not sorted), the committed signature.sig and demo public key.
# Our walker verifies the real package (checked against a checkout); this pins the text format.
RUST_DEMO_FILES = [
    ("wapp.toml", "19795772158faeb4d2808624100d74c21602ba37b99fe16db6fa6b3ff6eac586"),
    (".cargo/config.toml", "8251c9b4254da5e75e2799b71bf5cdccb1369501cda17bacb10c9901311a6314"),
    ("Cargo.lock", "b6fd2164ddfd4ed66120f742fe6d3cb921f5db69e04a0007c89b1ecdba2d20df"),
    ("Cargo.toml", "7c4dc8176cbb8c5c9c892ab30e1276961374eb536bfd692a81dc381a5eede51f"),
    ("app.wasm", "d54ad3c0b8b2349c523ee1e1a6d127a38fde1a90770617a0e3bdce04c2c6ac7a"),
    ("src/main.rs", "7d62ad9386b4eba03aa84b3a99f5cf11447059fc3be87549a0919360f6f038f6"),
    ("ui/index.html", "70a70496e8f31c920c801e5bdd72c7c60534211d21e6917bd50e7c2f5d73e47a"),
    ("wit/deps/weft-app/weft-app.wit", "172934ce28d95ce4b8b5ce2249f17bfb5a15835f9d864fe8fb5e9a7c35fa67d1"),
    ("wit/world.wit", "78e4a10c9f9b25129764675a991d505e2a949ee85f1bb3a1c0938ec6a4fc40cf"),
]
RUST_DEMO_SIGNATURE = ("4d26abef46af41b1992c0592313ea6aeb39b21eb4a31b978c13ed7c46b444f4d"
                       "3469819eec1e9d3a00ef40898b77cc3391edfac55fcc50e13817a9eaf126ec0a")
RUST_DEMO_PUBLIC_KEY = "470490314923b5f51d96196a6dee67e831f0b758119b8558d83cf415088fe062"


def test_signature_made_by_the_rust_tool_verifies():
    key = VerifyKey(bytes.fromhex(RUST_DEMO_PUBLIC_KEY))
    key.verify(listing_digest(RUST_DEMO_FILES), bytes.fromhex(RUST_DEMO_SIGNATURE))
    changed = [(rel, "0" * 64 if rel == "app.wasm" else digest) for rel, digest in RUST_DEMO_FILES]
    with pytest.raises(BadSignatureError):
        key.verify(listing_digest(changed), bytes.fromhex(RUST_DEMO_SIGNATURE))
