"""The app image store: verified, atomic install; rollback rule; no shadowing of system apps;
list / info / uninstall of images, as functions and through `weft-pack`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tamper_support import flip_byte

from weft.pack.footer import FooterError, FooterSignatureError, read_footer
from weft.pack.image import ImageError, build_image
from weft.pack.image_store import (
    ImageStoreError,
    StoredImage,
    find_image,
    install_image,
    uninstall_image,
)
from weft.pack.keys import key_id, load_signing_key, load_verify_key
from weft.rollback import RollbackError, RollbackRecord, RollbackRecordError, VersionOrderError
from weft.store import DEVICE_IMAGE_STORE, StorePaths

PACK = [sys.executable, "-m", "weft.pack.cli"]
APP = "com.example.notes"


def _quiet(_message: str) -> None:
    pass


@pytest.fixture
def env(tmp_path: Path, trusted_dir: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), "WEFT_APP_STORE": str(tmp_path / "store"),
            "WEFT_APP_DATA": str(tmp_path / "app-data"), "WEFT_IMAGE_STORE": str(tmp_path / "images"),
            "WEFT_SYSTEM_IMAGE_STORE": str(tmp_path / "system-images"),
            "WEFT_ROLLBACK_RECORD": str(tmp_path / "mountd" / "versions.json"),
            "WEFT_TRUSTED_KEYS": str(trusted_dir)}  # what `list` and `info` check footers against


@pytest.fixture
def store(env: dict[str, str]) -> StorePaths:
    return StorePaths.from_env(env)


@pytest.fixture
def trusted(keypair: tuple[Path, Path]) -> list:
    return [load_verify_key(keypair[1])]


@pytest.fixture
def trusted_dir(keypair: tuple[Path, Path], tmp_path: Path) -> Path:
    directory = tmp_path / "trusted"
    directory.mkdir()
    shutil.copy(keypair[1], directory / "publisher.pub")
    return directory


@pytest.fixture
def make_image(make_package, keypair, tmp_path):
    counter = iter(range(1000))

    def make(version: str = "1.0.0", app_id: str = APP, key: Path | None = None) -> Path:
        package = make_package(app_id=app_id, version=version, files={"blob.bin": b"x" * 300_000})
        out = tmp_path / "built" / f"{next(counter)}" / f"{app_id}-{version}.wapp"
        return build_image(package, load_signing_key(key or keypair[0]), out, progress=_quiet)

    return make


def _store_files(store: StorePaths) -> dict[str, bytes]:
    root = store.images_root
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())} if root and root.exists() else {}


def _found(store: StorePaths) -> StoredImage:
    image = find_image(APP, store)
    assert image is not None
    return image


# --- install ------------------------------------------------------------------------------

def test_install_puts_the_verified_image_under_its_id(make_image, store, trusted, keypair):
    image = make_image()
    installed = install_image(image, store, trusted)
    dest = store.images_root / f"{APP}.wapp"
    assert installed.path == dest and installed.store == "installed"
    assert _store_files(store) == {f"{APP}.wapp": image.read_bytes()}  # no temporary file left
    assert oct(dest.stat().st_mode & 0o777) == "0o644"
    assert installed.publisher == key_id(load_verify_key(keypair[1]))[:32]
    assert find_image(APP, store) == installed


def test_upgrade_replaces_the_image(make_image, store, trusted):
    install_image(make_image("1.0.0"), store, trusted)
    newer = make_image("1.1")
    assert install_image(newer, store, trusted).version == "1.1"
    assert _store_files(store) == {f"{APP}.wapp": newer.read_bytes()}


@pytest.mark.parametrize("damage,error,message", [
    ("data", ImageError, "tampered data"),
    ("hash", ImageError, "tampered hash tree"),
    ("truncate", FooterError, "truncated"),
    ("append", FooterError, "built/1/com.example.notes-2.0.0.wapp is truncated or not a .wapp image"),
    ("garbage", FooterError, "not a .wapp"),
])
def test_a_damaged_image_is_refused_and_the_installed_one_stays(make_image, store, trusted, damage, error,
                                                                message):
    install_image(make_image("1.0.0"), store, trusted)
    before = _store_files(store)
    bad = make_image("2.0.0")
    footer = read_footer(bad).footer
    if damage == "data":
        flip_byte(bad, 100)  # inside the first (EROFS) data block
    elif damage == "hash":
        flip_byte(bad, footer.verity.hash_offset + 4096 + 5)  # past the verity superblock
    elif damage == "truncate":
        os.truncate(bad, bad.stat().st_size - 4096)
    elif damage == "append":
        with open(bad, "ab") as fh:
            fh.write(b"\0" * 512)
    else:
        bad.write_bytes(os.urandom(20_000))
    with pytest.raises(error, match=message):
        install_image(bad, store, trusted)
    assert _store_files(store) == before


def test_an_image_from_an_untrusted_key_is_refused(make_image, store, trusted, other_keypair):
    with pytest.raises(FooterSignatureError, match="wrong key"):
        install_image(make_image(key=other_keypair[0]), store, trusted)
    assert _store_files(store) == {}


def test_the_copy_is_verified_not_the_source(make_image, store, trusted, monkeypatch):
    """The source changing after the copy cannot slip unverified bytes into the store."""
    import weft.pack.image_store as image_store

    image = make_image()
    good = image.read_bytes()
    real_copy = image_store._copy_into

    def copy_then_tamper(source: Path, root: Path) -> Path:
        temp = real_copy(source, root)
        flip_byte(temp, 100)  # what lands in the store directory is what must be checked
        return temp

    monkeypatch.setattr(image_store, "_copy_into", copy_then_tamper)
    with pytest.raises(ImageError, match="tampered data"):
        install_image(image, store, trusted)
    assert _store_files(store) == {} and image.read_bytes() == good


def test_a_directory_is_not_an_image(sample_package, store, trusted):
    with pytest.raises(ImageStoreError, match="not a regular file"):
        install_image(sample_package, store, trusted)
    assert _store_files(store) == {}


def test_no_trusted_keys_refuses(make_image, store):
    with pytest.raises(ImageStoreError, match="no trusted publisher keys"):
        install_image(make_image(), store, [])


def test_an_id_the_system_store_holds_is_refused(make_image, store, trusted):
    system = store.system_images_root
    system.mkdir(parents=True)
    shutil.copy(make_image("1.0.0"), system / f"{APP}.wapp")
    with pytest.raises(ImageStoreError, match="ships with the OS"):
        install_image(make_image("9.0"), store, trusted)
    assert _store_files(store) == {}


def test_an_id_the_system_package_store_holds_is_refused(make_image, store, trusted, tmp_path):
    system_dirs = tmp_path / "system-apps"
    (system_dirs / APP).mkdir(parents=True)
    (system_dirs / APP / "wapp.toml").write_text("")
    store = store.model_copy(update={"system_root": system_dirs})
    with pytest.raises(ImageStoreError, match="ships with the OS"):
        install_image(make_image(), store, trusted)


# --- rollback -----------------------------------------------------------------------------

def test_older_than_the_rollback_record_is_refused(make_image, store, trusted):
    RollbackRecord(store.rollback_record).record(APP, "2.0")
    with pytest.raises(RollbackError, match=r"older than version 2.0 \(already activated on this device\).*"
                                            r"--allow-downgrade \(as root on the device\)"):
        install_image(make_image("1.9.9"), store, trusted)
    assert _store_files(store) == {}
    install_image(make_image("2.0.0"), store, trusted)  # the same version (2.0 == 2.0.0) is fine


def test_allow_downgrade_installs_and_lowers_the_record(make_image, store, trusted):
    record = RollbackRecord(store.rollback_record)
    record.record(APP, "2.0")
    old = make_image("1.0.0")
    assert install_image(old, store, trusted, allow_downgrade=True).version == "1.0.0"
    assert record.highest(APP) == "1.0.0"
    assert _store_files(store) == {f"{APP}.wapp": old.read_bytes()}


def test_older_than_the_installed_image_is_refused(make_image, store, trusted):
    install_image(make_image("1.2"), store, trusted)
    with pytest.raises(RollbackError, match=r"older than version 1.2 \(installed\)"):
        install_image(make_image("1.1"), store, trusted)
    install_image(make_image("1.1"), store, trusted, allow_downgrade=True)
    assert _found(store).version == "1.1"
    assert not store.rollback_record.exists()  # nothing to lower: the record is not written


def test_downgrade_without_a_writable_record_says_it_needs_root(make_image, store, trusted, monkeypatch):
    record = RollbackRecord(store.rollback_record)
    record.record(APP, "2.0")

    def denied(self: RollbackRecord, entries: dict[str, str]) -> None:  # what a non-root user meets
        raise RollbackRecordError(f"cannot write the rollback record {self.path}: Permission denied")

    monkeypatch.setattr(RollbackRecord, "_write", denied)
    with pytest.raises(ImageStoreError, match="Permission denied; --allow-downgrade lowers the device's rollback "
                                              "record, which only root can change"):
        install_image(make_image("1.0"), store, trusted, allow_downgrade=True)
    assert _store_files(store) == {} and record.highest(APP) == "2.0"


def test_unorderable_versions_are_refused(make_image, store, trusted):
    with pytest.raises(VersionOrderError, match="cannot be ordered"):
        install_image(make_image("1.0-beta"), store, trusted)
    assert _store_files(store) == {}


# --- list, find, uninstall ----------------------------------------------------------------

def test_list_system_first_shadowed_ids_left_out_broken_files_named(make_image, store, trusted, trusted_dir):
    install_image(make_image("1.0.0"), store, trusted)
    install_image(make_image("1.0.0", app_id="com.example.todo"), store, trusted)
    system = store.system_images_root
    system.mkdir()
    shutil.copy(make_image("0.5"), system / f"{APP}.wapp")  # e.g. an OS update now ships this id
    shutil.copy(make_image("1.0", app_id="com.example.todo"), store.images_root / "com.example.other.wapp")
    (store.images_root / "com.example.junk.wapp").write_bytes(b"junk")
    (store.images_root / ".install-abc.tmp").write_bytes(b"half")
    listing = store.model_copy(update={"trusted_keys_dir": trusted_dir}).list_packages(kinds=("image",))
    assert [(p.app_id, p.store, p.manifest.package.version) for p in listing.packages] == [
        (APP, "system", "0.5"), ("com.example.todo", "user", "1.0.0")]
    assert _found(store).store == "system"
    skipped = {entry.path.name: entry.reason for entry in listing.skipped}
    assert sorted(skipped) == ["com.example.junk.wapp", f"{APP}.wapp", "com.example.other.wapp"]
    assert "ships with the OS" in skipped[f"{APP}.wapp"]
    assert "holds 'com.example.todo'" in skipped["com.example.other.wapp"]
    assert "not a .wapp" in skipped["com.example.junk.wapp"]


def test_uninstall_removes_only_the_installed_image(make_image, store, trusted):
    install_image(make_image(), store, trusted)
    assert uninstall_image(APP, store) == store.images_root / f"{APP}.wapp"
    assert _store_files(store) == {} and find_image(APP, store) is None
    assert uninstall_image(APP, store) is None


def test_image_store_defaults(tmp_path):
    home = {"HOME": str(tmp_path / "home"), "WEFT_SYSTEM_IMAGE_STORE": str(tmp_path / "absent")}
    assert StorePaths.from_env(home).images_root == tmp_path / "home/.local/share/weft/images"
    (tmp_path / "shipped").mkdir()  # a system image store exists: this is WEFT OS
    on_weft = StorePaths.from_env({**home, "WEFT_SYSTEM_IMAGE_STORE": str(tmp_path / "shipped")})
    assert on_weft.images_root == DEVICE_IMAGE_STORE == Path("/var/lib/weft/images")
    assert StorePaths.from_env({**home, "WEFT_IMAGE_STORE": "/x"}).images_root == Path("/x")
    assert StorePaths.from_env({}).rollback_record == Path("/var/lib/weft-mountd/versions.json")


# --- weft-pack ------------------------------------------------------------------------------

def pack(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PACK, *argv], capture_output=True, text=True, env={**os.environ, **env})


def failed_cleanly(proc: subprocess.CompletedProcess[str], message: str, code: int = 1) -> bool:
    return (proc.returncode == code and "Traceback" not in proc.stderr
            and proc.stderr.splitlines()[-1].startswith("error: ") and message in proc.stderr)


def test_cli_install_list_info_uninstall(make_image, env, store, trusted_dir):
    image = make_image("1.2.3")
    proc = pack("install", str(image), "--trusted-keys", str(trusted_dir), env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"installed {APP} 1.2.3 (publisher " in proc.stdout
    listed = json.loads(pack("list", "--json", env=env).stdout)
    assert [(e["kind"], e["id"], e["version"], e["store"]) for e in listed] == [("image", APP, "1.2.3", "user")]
    assert f"{APP}  Notes  1.2.3  image (user)" in pack("list", env=env).stdout
    info = json.loads(pack("info", APP, "--json", env=env).stdout)
    footer = read_footer(image)
    assert info["root_hash"] == footer.footer.verity.root_hash and info["file_size"] == image.stat().st_size
    assert info["publisher"] == footer.footer.key_id[:32] and info["data_size"] == footer.footer.data_size
    text = pack("info", str(image), env=env).stdout  # a .wapp file outside the store
    assert f"root hash:  {footer.footer.verity.root_hash}" in text and "version:    1.2.3" in text
    assert pack("uninstall", APP, env=env).returncode == 0
    assert _store_files(store) == {}
    assert failed_cleanly(pack("uninstall", APP, env=env), "not installed")


def test_cli_tampered_image_is_refused_and_the_store_unchanged(make_image, env, store, trusted_dir):
    assert pack("install", str(make_image("1.0")), "--keys", str(trusted_dir), env=env).returncode == 0
    before = _store_files(store)
    bad = make_image("1.1")
    flip_byte(bad, 100)
    proc = pack("install", str(bad), "--trusted-keys", str(trusted_dir), env=env)
    assert failed_cleanly(proc, "tampered data"), proc.stderr
    assert _store_files(store) == before


def test_cli_rollback_and_allow_downgrade(make_image, env, store, trusted_dir):
    RollbackRecord(store.rollback_record).record(APP, "3")
    old = str(make_image("2.9"))
    proc = pack("install", old, "--trusted-keys", str(trusted_dir), env=env)
    assert failed_cleanly(proc, "older than version 3 (already activated on this device)"), proc.stderr
    assert "--allow-downgrade (as root on the device)" in proc.stderr
    proc = pack("install", old, "--trusted-keys", str(trusted_dir), "--allow-downgrade", env=env)
    assert proc.returncode == 0 and "warning: install: downgrading" in proc.stderr, proc.stderr
    assert RollbackRecord(store.rollback_record).highest(APP) == "2.9"


def test_cli_system_apps_cannot_be_shadowed_or_uninstalled(make_image, env, store, trusted_dir):
    store.system_images_root.mkdir()
    shutil.copy(make_image("1.0"), store.system_images_root / f"{APP}.wapp")
    proc = pack("install", str(make_image("2.0")), "--trusted-keys", str(trusted_dir), env=env)
    assert failed_cleanly(proc, "ships with the OS"), proc.stderr
    assert failed_cleanly(pack("uninstall", APP, env=env), "ships with the OS and cannot be uninstalled")
    assert json.loads(pack("info", APP, "--json", env=env).stdout)["store"] == "system"


def test_cli_packs_and_installs_a_directory_in_one_step(sample_package, keypair, env, store, trusted_dir):
    proc = pack("install", str(sample_package), "--image-key", str(keypair[0]), "--trusted-keys",
                str(trusted_dir), env=env)
    assert proc.returncode == 0, proc.stderr
    assert _found(store).version == "1.0.0"
    assert not (store.install_root / APP).exists()  # an image, not a directory package


def test_cli_one_step_with_an_untrusted_key_installs_nothing(sample_package, other_keypair, env, store,
                                                             trusted_dir):
    proc = pack("install", str(sample_package), "--image-key", str(other_keypair[0]), "--trusted-keys",
                str(trusted_dir), env=env)
    assert failed_cleanly(proc, "wrong key"), proc.stderr
    assert _store_files(store) == {}


@pytest.mark.parametrize("extra,message", [
    (["--trusted-keys", "{empty}"], "no trusted publisher keys in"),
    (["--require-signature", "--key", "{pub}"], "--require-signature/--key are for directory packages"),
])
def test_cli_image_usage_errors(make_image, env, keypair, tmp_path, extra, message):
    (tmp_path / "empty").mkdir()
    argv = [a.format(empty=tmp_path / "empty", pub=keypair[1]) for a in extra]
    assert failed_cleanly(pack("install", str(make_image()), *argv, env=env), message, code=2)


def test_cli_image_flags_are_refused_for_directory_packages(sample_package, env):
    proc = pack("install", str(sample_package), "--allow-downgrade", env=env)
    assert failed_cleanly(proc, "apply to .wapp images only", code=2)
