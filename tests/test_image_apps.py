"""The shipped apps step of `weft image build` (host only, no mkosi): build/apps layout, signatures,
reproducibility, and which key signs what."""
from __future__ import annotations

import logging
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from weft.errors import WeftError
from weft.image.apps import (
    SHIPPED_APPS,
    TEST_KEY,
    generate_release_key,
    prepare_apps,
    release_key_path,
    shipped_sources,
    signing_key_for,
)
from weft.image.guests import repo_cache
from weft.pack.footer import load_trusted_keys
from weft.pack.image import verify_image
from weft.pack.keys import KeyFileError, load_signing_key

REPO = Path(__file__).resolve().parent.parent
EPOCH = 1_700_000_000


def _prepare(key: Path, dest: Path, sources: list[Path] | None = None) -> list[Path]:
    return prepare_apps(sources or shipped_sources(REPO), key, dest, cache=repo_cache(REPO), timestamp=EPOCH)


def test_build_apps_layout_signatures_and_sums(keypair, tmp_path):
    dest = tmp_path / "build" / "apps"
    images = _prepare(keypair[0], dest)
    assert [p.name for p in images] == [f"{app}.wapp" for app in SHIPPED_APPS]
    assert sorted(p.name for p in (dest / "images").iterdir()) == [f"{app}.wapp" for app in SHIPPED_APPS]
    assert [p.name for p in (dest / "trusted-keys").iterdir()] == ["weft-sign.pub"]
    assert (dest / "trusted-keys" / "weft-sign.pub").read_text() == keypair[1].read_text()
    trusted = load_trusted_keys(dest / "trusted-keys")  # what the image will trust
    for app, image in zip(SHIPPED_APPS, images, strict=True):
        footer = verify_image(image, trusted).footer
        assert (footer.app_id, footer.version) == (app, "0.1.0")
        assert stat.S_IMODE(image.stat().st_mode) == 0o644
    listed = (dest / "SHA256SUMS").read_text().split()
    assert listed[1::2] == [*(f"images/{app}.wapp" for app in SHIPPED_APPS), "trusted-keys/weft-sign.pub"]
    subprocess.run(["sha256sum", "--quiet", "--strict", "--check", "SHA256SUMS"], cwd=dest, check=True)


def test_apps_are_reproducible_and_stale_files_go(keypair, tmp_path):
    first = [p.read_bytes() for p in _prepare(keypair[0], tmp_path / "a")]
    (tmp_path / "a" / "images" / "com.example.stale.wapp").write_bytes(b"old")
    second = [p.read_bytes() for p in _prepare(keypair[0], tmp_path / "a")]
    assert first == second
    assert not (tmp_path / "a" / "images" / "com.example.stale.wapp").exists()


def test_a_source_not_named_after_its_id_is_refused(keypair, tmp_path):
    src = tmp_path / "org.weft.demo.renamed"
    shutil.copytree(REPO / "examples" / "org.weft.demo.counter", src, ignore=shutil.ignore_patterns("app.wasm"))
    with pytest.raises(WeftError, match=re.escape("declares the id org.weft.demo.counter")):
        _prepare(keypair[0], tmp_path / "apps", [src])


def test_the_test_profile_signs_with_the_committed_test_key(tmp_path):
    repo = tmp_path / "repo"
    (repo / TEST_KEY).parent.mkdir(parents=True)
    shutil.copy(REPO / TEST_KEY, repo / TEST_KEY)
    (repo / TEST_KEY).chmod(0o644)  # as git checks it out
    key = signing_key_for(repo, "test")
    assert key == repo / TEST_KEY and stat.S_IMODE(key.stat().st_mode) == 0o600
    load_signing_key(key)
    assert not release_key_path(repo).exists()  # a test build never makes a release key
    assert bytes(load_signing_key(key).verify_key).hex() == (
        "8f2984169e61e2f1538de3a8349ba67b2fd62b9138962c72a67a4844bfed5a91")  # weft-test.pub


def test_the_default_profile_makes_the_release_key_once_and_says_so(tmp_path, caplog):
    repo = tmp_path / "repo"
    repo.mkdir()
    with caplog.at_level(logging.WARNING, logger="weft.image"):
        key = signing_key_for(repo, "default")
    assert key == repo / "keys" / "weft-release.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert (repo / "keys" / "weft-release.pub").is_file()
    assert "created the release signing key" in caplog.text
    made = key.read_bytes()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="weft.image"):
        assert signing_key_for(repo, "default") == key
    assert key.read_bytes() == made and caplog.text == ""


def test_genkey_never_overwrites(tmp_path):
    generate_release_key(tmp_path)
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_release_key(tmp_path)


def test_release_keys_stay_out_of_git():
    paths = ["keys/weft-release.key", "keys/weft-release.pub", "build/apps/images/x.wapp"]
    proc = subprocess.run(["git", "-C", str(REPO), "check-ignore", *paths], capture_output=True, text=True)
    assert proc.stdout.split() == paths
