"""weft image publish and the update key: a fake build directory (synthetic UKI from
tests/pe_support.py, root and verity files named after its roothash) laid out as a
systemd-sysupdate source, SHA256SUMS signed and checked with real gpg."""
from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from pe_support import pe_file, uki, uuids_of

import weft.cli
from weft.errors import WeftError
from weft.image.publish import SUMS, publish
from weft.image.update_keys import (
    TEST_KEY_NAME,
    generate_update_key,
    key_fingerprint,
    sign_file,
    update_key_for,
    verify_file,
)

REPO = Path(__file__).resolve().parent.parent
TEST_KEY_FINGERPRINT = "90C26813621BB28F71A1D18555B3EA2BDC0956A7"  # tests/vm/keys/README.md
HASH_2 = "2a" * 16 + "2b" * 16
HASH_3 = "3a" * 16 + "3b" * 16


def make_build(directory: Path, version: str = "2", roothash: str = HASH_2, *, image_id: str = "weft-test",
               extra: bytes = b"") -> Path:
    """An mkosi output directory with SplitArtifacts=uki,partitions, plus what is not published."""
    directory.mkdir(parents=True, exist_ok=True)
    root_uuid, verity_uuid = uuids_of(roothash)
    (directory / f"{image_id}.efi").write_bytes(uki(image_id, version, roothash) + extra)
    (directory / f"{image_id}.root-x86-64.{root_uuid}.raw").write_bytes(b"EROFS " + roothash.encode() * 3000)
    (directory / f"{image_id}.root-x86-64-verity.{verity_uuid}.raw").write_bytes(b"verity " + roothash.encode() * 90)
    for name in (f"{image_id}.raw", f"{image_id}.initrd", f"{image_id}.vmlinuz"):
        (directory / name).write_bytes(b"not published")
    (directory / "tools").mkdir(exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def test_key() -> tuple[Path, Path]:
    return update_key_for(REPO, "test")


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def expected_names(version: str, roothash: str) -> list[str]:
    root_uuid, verity_uuid = uuids_of(roothash)
    return sorted([f"weft-test_{version}.efi", f"weft-test_{version}.root-x86-64.{root_uuid}.raw",
                   f"weft-test_{version}.root-x86-64-verity.{verity_uuid}.raw"])


def test_the_committed_test_key(test_key):
    secret, pubring = test_key
    assert secret == REPO / "tests/vm/keys/weft-test-update.sec.asc"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert key_fingerprint(pubring) == TEST_KEY_FINGERPRINT
    assert TEST_KEY_NAME in (REPO / "tests/vm/keys/README.md").read_text()


def test_publish_lays_out_a_sysupdate_source(tmp_path, test_key):
    build, dest = make_build(tmp_path / "build"), tmp_path / "updates"
    result = publish(build, dest, *test_key)
    names = expected_names("2", HASH_2)
    assert (result.image_id, result.version, list(result.files), list(result.copied)) == ("weft-test", "2", names,
                                                                                         names)
    assert sorted(os.listdir(dest)) == sorted([*names, SUMS, f"{SUMS}.gpg"])  # no temporary files left
    assert result.bytes == sum((dest / n).stat().st_size for n in names)
    root_uuid, _ = uuids_of(HASH_2)
    assert (dest / f"weft-test_2.root-x86-64.{root_uuid}.raw").read_bytes() == \
        (build / f"weft-test.root-x86-64.{root_uuid}.raw").read_bytes()
    assert (dest / "weft-test_2.efi").read_bytes() == (build / "weft-test.efi").read_bytes()
    lines = (dest / SUMS).read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == names
    subprocess.run(["sha256sum", "--check", "--strict", "--quiet", SUMS], cwd=dest, check=True)
    verify_file(test_key[1], dest / SUMS, dest / f"{SUMS}.gpg")


def test_the_signature_verifies_with_gpgv_too(tmp_path, test_key):
    dest = tmp_path / "updates"
    publish(make_build(tmp_path / "build"), dest, *test_key)
    home = tmp_path / "gpghome"
    home.mkdir(mode=0o700)
    proc = subprocess.run(["gpgv", "--homedir", str(home), "--keyring", str(test_key[1]), str(dest / f"{SUMS}.gpg"),
                           str(dest / SUMS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_publishing_again_changes_nothing(tmp_path, test_key, caplog):
    build, dest = make_build(tmp_path / "build"), tmp_path / "updates"
    publish(build, dest, *test_key)
    before = snapshot(dest)
    mtimes = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    with caplog.at_level(logging.INFO, logger="weft.image"):
        result = publish(build, dest, *test_key)
    assert result.copied == () and result.files == tuple(expected_names("2", HASH_2))
    assert snapshot(dest) == before
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == mtimes
    assert "already published (identical), kept" in caplog.text


@pytest.mark.parametrize("other", ["other roothash", "other UKI bytes"])
def test_a_version_is_never_republished_with_other_content(tmp_path, test_key, other):
    dest = tmp_path / "updates"
    publish(make_build(tmp_path / "build"), dest, *test_key)
    before = snapshot(dest)
    if other == "other roothash":
        rebuilt = make_build(tmp_path / "rebuilt", "2", HASH_3)
    else:
        rebuilt = make_build(tmp_path / "rebuilt", "2", HASH_2, extra=b"different signature")
    with pytest.raises(WeftError, match="version 2 is already published with different content"):
        publish(rebuilt, dest, *test_key)
    assert snapshot(dest) == before


def test_two_versions_accumulate(tmp_path, test_key):
    dest = tmp_path / "updates"
    publish(make_build(tmp_path / "b2"), dest, *test_key)
    v2 = {n: (dest / n).read_bytes() for n in expected_names("2", HASH_2)}
    result = publish(make_build(tmp_path / "b3", "3", HASH_3), dest, *test_key)
    assert list(result.files) == expected_names("3", HASH_3)
    listed = [line.split("  ")[1] for line in (dest / SUMS).read_text().splitlines()]
    assert listed == sorted(expected_names("2", HASH_2) + expected_names("3", HASH_3))
    assert {n: (dest / n).read_bytes() for n in v2} == v2
    subprocess.run(["sha256sum", "--check", "--strict", "--quiet", SUMS], cwd=dest, check=True)
    verify_file(test_key[1], dest / SUMS, dest / f"{SUMS}.gpg")


def test_version_2_is_not_a_prefix_of_version_2_1(tmp_path, test_key):
    dest = tmp_path / "updates"
    publish(make_build(tmp_path / "b2"), dest, *test_key)
    publish(make_build(tmp_path / "b21", "2.1", HASH_3), dest, *test_key)
    assert len((dest / SUMS).read_text().splitlines()) == 6


def test_other_files_in_dest_are_not_listed(tmp_path, test_key):
    dest = tmp_path / "updates"
    dest.mkdir()
    (dest / "README").write_text("the WEFT update medium\n")
    publish(make_build(tmp_path / "build"), dest, *test_key)
    assert "README" not in (dest / SUMS).read_text()


def test_artefacts_from_different_builds_are_refused(tmp_path, test_key):
    build = make_build(tmp_path / "build")
    _root_uuid, verity_uuid = uuids_of(HASH_2)
    # The verity file of another build (its UUID is the other roothash's second half).
    (build / f"weft-test.root-x86-64-verity.{verity_uuid}.raw").rename(
        build / f"weft-test.root-x86-64-verity.{uuids_of(HASH_3)[1]}.raw")
    dest = tmp_path / "updates"
    with pytest.raises(WeftError, match=r"does not belong to the UKI's build.*different builds"):
        publish(build, dest, *test_key)
    assert not dest.exists()


@pytest.mark.parametrize(("remove", "message"), [
    ("weft-test.efi", r"no UKI \(\*\.efi with an \.osrel section\)"),
    ("weft-test.root-x86-64.", r"no root partition \(\*\.root-x86-64\.<UUID>\.raw\)"),
    ("weft-test.root-x86-64-verity.", r"no root verity partition"),
])
def test_missing_artefacts_are_named(tmp_path, test_key, remove, message):
    build = make_build(tmp_path / "build")
    for path in build.iterdir():
        if path.name.startswith(remove):
            path.unlink()
    with pytest.raises(WeftError, match=message):
        publish(build, tmp_path / "updates", *test_key)


def test_two_builds_in_one_directory_are_ambiguous(tmp_path, test_key):
    build = make_build(tmp_path / "build")
    make_build(build, "3", HASH_3, image_id="weft-other")
    with pytest.raises(WeftError, match=r"more than one UKI .*weft-other\.efi, weft-test\.efi"):
        publish(build, tmp_path / "updates", *test_key)


def test_other_efi_files_are_not_mistaken_for_the_uki(tmp_path, test_key):
    build = make_build(tmp_path / "build")
    (build / "systemd-bootx64.efi").write_bytes(pe_file({".text": b"\xc3", ".sdmagic": b"#### LoaderInfo"}))
    (build / "garbage.efi").write_bytes(b"not a PE file")
    (build / "empty.efi").write_bytes(b"")
    assert publish(build, tmp_path / "updates", *test_key).version == "2"


def test_a_missing_build_directory(tmp_path, test_key):
    with pytest.raises(WeftError, match=r"build directory .* does not exist"):
        publish(tmp_path / "nothing", tmp_path / "updates", *test_key)


def test_a_changed_published_file_is_not_signed_again(tmp_path, test_key):
    dest = tmp_path / "updates"
    publish(make_build(tmp_path / "b2"), dest, *test_key)
    (dest / "weft-test_2.efi").write_bytes(b"tampered")
    sums = (dest / SUMS).read_bytes()
    with pytest.raises(WeftError, match=r"weft-test_2\.efi changed since it was published"):
        publish(make_build(tmp_path / "b3", "3", HASH_3), dest, *test_key)
    assert (dest / SUMS).read_bytes() == sums


def test_a_source_signed_by_another_key_is_refused(tmp_path, test_key):
    dest = tmp_path / "updates"
    other = generate_update_key(tmp_path / "other", "other", "other key")
    publish(make_build(tmp_path / "b2"), dest, *other)
    with pytest.raises(WeftError, match="is not signed by the update key"):
        publish(make_build(tmp_path / "b3", "3", HASH_3), dest, *test_key)


def test_verify_refuses_a_wrong_key_and_a_changed_file(tmp_path, test_key):
    target = tmp_path / "data"
    target.write_text("hello\n")
    signature = sign_file(test_key[0], target)
    assert signature == tmp_path / "data.gpg"
    verify_file(test_key[1], target, signature)
    _secret, other_pubring = generate_update_key(tmp_path / "other", "other", "other key")
    with pytest.raises(WeftError, match="is not a valid signature of"):
        verify_file(other_pubring, target, signature)
    target.write_text("hellO\n")
    with pytest.raises(WeftError, match="BAD signature"):
        verify_file(test_key[1], target, signature)
    assert sorted(os.listdir(test_key[1].parent)) == sorted(os.listdir(REPO / "tests/vm/keys"))


def test_generated_keys_are_private_and_never_overwritten(tmp_path):
    secret, pubring = generate_update_key(tmp_path / "keys", "k", "a key")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret.parent.stat().st_mode) == 0o700
    assert secret.read_text().startswith("-----BEGIN PGP PRIVATE KEY BLOCK-----")
    assert not pubring.read_bytes().startswith(b"-----")  # binary: a keyring gpg --keyring reads
    made = secret.read_bytes()
    with pytest.raises(WeftError, match="refusing to overwrite"):
        generate_update_key(tmp_path / "keys", "k", "a key")
    assert secret.read_bytes() == made


def test_the_release_update_key_is_made_once_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="weft.image"):
        secret, pubring = update_key_for(tmp_path, "default")
    assert (secret, pubring) == (tmp_path / "keys/weft-update.sec.asc", tmp_path / "keys/weft-update.pubring.gpg")
    assert "created the update signing key" in caplog.text and "keep it safe" in caplog.text
    made = secret.read_bytes()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="weft.image"):
        assert update_key_for(tmp_path, "default") == (secret, pubring)
    assert secret.read_bytes() == made and caplog.text == ""


def test_release_update_keys_stay_out_of_git():
    paths = ["keys/weft-update.sec.asc", "keys/weft-update.pubring.gpg"]
    proc = subprocess.run(["git", "-C", str(REPO), "check-ignore", *paths], capture_output=True, text=True)
    assert proc.stdout.split() == paths


def test_cli_publish(tmp_path, capsys):
    build, dest = make_build(tmp_path / "build"), tmp_path / "updates"
    assert weft.cli.main(["image", "publish", "--profile", "test", "--build-dir", str(build), str(dest)]) == 0
    assert capsys.readouterr().out.split() == [str(dest / n) for n in expected_names("2", HASH_2)]


def test_cli_publish_without_a_build(tmp_path):
    weft_bin = Path(shutil.which("weft", path=str(REPO / ".venv/bin")) or "")
    proc = subprocess.run([str(weft_bin), "image", "publish", "--profile", "test", "--build-dir",
                           str(tmp_path / "none"), str(tmp_path / "updates")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == f"error: build directory {tmp_path / 'none'} does not exist\n"
    assert not (tmp_path / "updates").exists()


def test_cli_publish_refuses_a_conflict_with_a_message(tmp_path, capsys):
    dest = tmp_path / "updates"
    argv = ["image", "publish", "--profile", "test", "--build-dir"]
    assert weft.cli.main([*argv, str(make_build(tmp_path / "a")), str(dest)]) == 0
    assert weft.cli.main([*argv, str(make_build(tmp_path / "b", "2", HASH_3)), str(dest)]) == 1
    assert "error: version 2 is already published with different content" in capsys.readouterr().err


def test_genkey_makes_the_missing_keys(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(weft.cli, "_repo_root", lambda: tmp_path)
    assert weft.cli.main(["image", "genkey"]) == 0
    out = capsys.readouterr().out
    assert "keys/weft-release.key" in out and "keys/weft-update.sec.asc" in out and "keys/secureboot.key" in out
    (tmp_path / "keys/weft-update.sec.asc").unlink()
    (tmp_path / "keys/weft-update.pubring.gpg").unlink()
    release = (tmp_path / "keys/weft-release.key").read_bytes()
    assert weft.cli.main(["image", "genkey"]) == 0
    out = capsys.readouterr().out
    assert "weft-release" not in out and "secureboot" not in out and "keys/weft-update.pubring.gpg" in out
    assert (tmp_path / "keys/weft-release.key").read_bytes() == release
    assert weft.cli.main(["image", "genkey"]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
