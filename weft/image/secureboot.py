"""The Secure Boot signing key of an image build (docs/trust.md).

mkosi signs systemd-boot, the kernel and the UKI with it (`SecureBoot=yes` in mkosi.conf) and
puts its certificate on the ESP for systemd-boot's first-boot enrollment. The `test` profile
uses the committed, public test key tests/vm/keys/weft-test-secureboot.{key,crt} — an image
signed with it proves nothing; every other profile uses the builder's keys/secureboot.{key,crt},
made on first use (as `mkosi genkey` would) and kept out of git.
"""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from weft.image.profile_keys import key_for_profile
from weft.proc import find_tool, run

TEST_KEY_STEM = Path("tests/vm/keys/weft-test-secureboot")
RELEASE_KEY_STEM = Path("keys/secureboot")
VALID_DAYS = 3650


class SecureBootKey(BaseModel):
    model_config = ConfigDict(frozen=True)
    key: Path  # PEM private key, 0600
    certificate: Path  # PEM X.509 certificate (what the firmware's db holds)


def _pair(stem: Path) -> SecureBootKey:
    return SecureBootKey(key=stem.with_suffix(".key"), certificate=stem.with_suffix(".crt"))


def generate_secure_boot_key(stem: Path, common_name: str) -> SecureBootKey:
    """A 2048-bit RSA key and a self-signed certificate (what UEFI firmware accepts in db)."""
    pair = _pair(stem)
    stem.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    openssl = find_tool("openssl", "install openssl (bash ci/setup.sh)")
    run([openssl, "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", str(VALID_DAYS),
         "-subj", f"/CN={common_name}", "-keyout", pair.key, "-out", pair.certificate])
    os.chmod(pair.key, 0o600)
    return pair


def secure_boot_key_for(repo: Path, profile: str) -> SecureBootKey:
    key = key_for_profile(repo, profile, test_key=_pair(TEST_KEY_STEM).key, release_key=_pair(RELEASE_KEY_STEM).key,
                          make=lambda: generate_secure_boot_key(repo / RELEASE_KEY_STEM, "WEFT OS Secure Boot"),
                          what="Secure Boot signing key", why="Machines that enroll it boot only what it signs")
    return _pair(key.with_suffix(""))
