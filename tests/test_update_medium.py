"""Update media (weft/image/update_medium.py), the Secure Boot key of a build
(weft/image/secureboot.py) and build's cleanup of a previous build's update artefacts —
with the real tools: mkfs.ext4/debugfs/blkid, openssl."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from weft.errors import WeftError
from weft.image.build import remove_stale_partitions
from weft.image.secureboot import generate_secure_boot_key, secure_boot_key_for
from weft.image.update_medium import write_update_medium

REPO = Path(__file__).resolve().parents[1]


def _source(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    (source / "SHA256SUMS").write_text("x  weft_2.efi\n")
    (source / "SHA256SUMS.gpg").write_bytes(b"sig")
    (source / "weft_2.efi").write_bytes(b"U" * (3 << 20))
    return source


def test_medium_holds_the_source_on_a_labelled_ext4(tmp_path: Path) -> None:
    image = write_update_medium(_source(tmp_path), tmp_path / "medium.img", label="WEFT-UPD-2")
    probe = subprocess.run(["blkid", "-o", "export", image], capture_output=True, text=True, check=True).stdout
    assert "TYPE=ext4" in probe and "LABEL=WEFT-UPD-2" in probe
    listing = subprocess.run(["debugfs", "-R", "ls -p /", image], capture_output=True, text=True, check=True).stdout
    names = {line.split("/")[5] for line in listing.splitlines() if line.count("/") >= 6}
    assert {"SHA256SUMS", "SHA256SUMS.gpg", "weft_2.efi"} <= names
    dumped = subprocess.run(["debugfs", "-R", "cat /weft_2.efi", image], capture_output=True, check=True).stdout
    assert dumped == b"U" * (3 << 20)
    assert not (tmp_path / "medium.img.partial").exists()


def test_a_directory_that_is_not_an_update_source_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeftError, match="not an update source"):
        write_update_medium(tmp_path / "empty", tmp_path / "medium.img")
    assert not (tmp_path / "medium.img").exists()


def test_a_label_ext4_cannot_hold_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WeftError, match="longer than ext4's 16 bytes"):
        write_update_medium(_source(tmp_path), tmp_path / "medium.img", label="WEFT-UPDATES-TOO-LONG")


def test_secure_boot_key_is_a_self_signed_certificate_and_a_private_key(tmp_path: Path) -> None:
    pair = generate_secure_boot_key(tmp_path / "keys" / "secureboot", "WEFT OS test")
    assert pair.key.stat().st_mode & 0o777 == 0o600
    text = subprocess.run(["openssl", "x509", "-in", pair.certificate, "-noout", "-subject", "-issuer"],
                          capture_output=True, text=True, check=True).stdout
    assert text.count("CN = WEFT OS test") == 2  # self-signed: subject == issuer
    cert_key = subprocess.run(["openssl", "x509", "-in", pair.certificate, "-noout", "-pubkey"],
                              capture_output=True, check=True).stdout
    key_pub = subprocess.run(["openssl", "pkey", "-in", pair.key, "-pubout"], capture_output=True, check=True).stdout
    assert cert_key == key_pub


def test_the_test_profile_uses_the_committed_test_key_and_others_the_builders(tmp_path: Path) -> None:
    test = secure_boot_key_for(REPO, "test")
    assert test.key == REPO / "tests/vm/keys/weft-test-secureboot.key" and test.certificate.is_file()
    made = secure_boot_key_for(tmp_path, "default")
    assert made.key == tmp_path / "keys/secureboot.key" and made.certificate.is_file()
    before = made.key.read_bytes()
    assert secure_boot_key_for(tmp_path, "default").key.read_bytes() == before  # kept, never remade


def test_a_previous_builds_split_partitions_are_removed_and_nothing_else(tmp_path: Path) -> None:
    names = ["weft-test.root-x86-64.0513b51dae3afe173456ea5f9456a212.raw",
             "weft-test.root-x86-64-verity.7b690f8c737239a412e0e37aa8f0213b.raw",
             "weft-test.raw", "weft-test.efi", "weft.root-x86-64.aa.raw"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    remove_stale_partitions(tmp_path, "weft-test")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weft-test.efi", "weft-test.raw", "weft.root-x86-64.aa.raw"]
