"""Issue 7 defect 7: app data is bound to the publisher, and a user package never shadows a system app.

Before: data lived at `<app_data>/<app_id>/`, so an unsigned package reusing a signed app's id
read its data; and the user store came first, so a user package could replace a system app.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from package_support import write_package
from platform_support import Env, RuntimeUnderTest, with_capabilities

from weft.errors import WeftError
from weft.pack.install import install_package, uninstall_package
from weft.pack.keys import key_id, load_signing_key, load_verify_key
from weft.pack.signing import sign_package
from weft.store import UNSIGNED, StorePaths, install_record_path, publisher_from_key_id, read_install_record

APP = "com.example.notes"
PACK = [sys.executable, "-m", "weft.pack.cli"]


@pytest.fixture
def store(store_env: dict[str, str], tmp_path: Path) -> StorePaths:
    return StorePaths.from_env({**store_env, "WEFT_SYSTEM_APP_STORE": str(tmp_path / "system-apps"),
                                "WEFT_SYSTEM_IMAGE_STORE": str(tmp_path / "system-images")})


def _fingerprint(public_key_file: Path) -> str:
    return publisher_from_key_id(key_id(load_verify_key(public_key_file)))


def test_publisher_is_the_key_fingerprint() -> None:
    assert publisher_from_key_id("ab" * 32) == "ab" * 16


def test_install_records_the_verified_publisher(sample_package: Path, store: StorePaths,
                                                keypair: tuple[Path, Path]) -> None:
    sign_package(sample_package, load_signing_key(keypair[0]))
    signed = install_package(sample_package, store, trusted_key=load_verify_key(keypair[1]))
    assert signed.publisher == _fingerprint(keypair[1])
    assert store.resolve_package(APP).publisher == signed.publisher
    assert store.app_data_root is not None
    assert store.app_data_dir(APP, signed.publisher) == store.app_data_root / APP / signed.publisher
    assert store.app_data_dir(APP, signed.publisher).is_dir()
    uninstall_package(APP, store)
    assert not install_record_path(store.require_install_root(), APP).exists()  # the record goes with the package


def test_a_signature_not_checked_at_install_counts_as_unsigned(sample_package: Path, store: StorePaths,
                                                               keypair: tuple[Path, Path]) -> None:
    sign_package(sample_package, load_signing_key(keypair[0]))  # signed, but installed without --require-signature
    assert install_package(sample_package, store).publisher == UNSIGNED
    assert store.resolve_package(APP).publisher == UNSIGNED


def test_an_unsigned_package_reusing_a_signed_apps_id_does_not_see_its_data(
        make_package: Callable[..., Path], store: StorePaths, keypair: tuple[Path, Path],
        other_keypair: tuple[Path, Path]) -> None:
    signed_pkg = make_package()
    sign_package(signed_pkg, load_signing_key(keypair[0]))
    signed = install_package(signed_pkg, store, trusted_key=load_verify_key(keypair[1]))
    secret = store.app_data_dir(APP, store.resolve_package(APP).publisher) / "secret.txt"
    secret.write_text("the signed app's data")
    uninstall_package(APP, store)

    install_package(make_package(), store)  # an unsigned package with the same id
    unsigned_data = store.app_data_dir(APP, store.resolve_package(APP).publisher)
    assert unsigned_data != secret.parent and not (unsigned_data / "secret.txt").exists()
    uninstall_package(APP, store)

    other_pkg = make_package()  # another publisher's key
    sign_package(other_pkg, load_signing_key(other_keypair[0]))
    install_package(other_pkg, store, trusted_key=load_verify_key(other_keypair[1]))
    assert store.app_data_dir(APP, store.resolve_package(APP).publisher) not in (secret.parent, unsigned_data)
    uninstall_package(APP, store)

    again = make_package()  # the original publisher gets its data back
    sign_package(again, load_signing_key(keypair[0]))
    install_package(again, store, trusted_key=load_verify_key(keypair[1]))
    assert store.resolve_package(APP).publisher == signed.publisher
    assert (store.app_data_dir(APP, signed.publisher) / "secret.txt").read_text() == "the signed app's data"


def test_a_package_copied_into_the_store_by_hand_is_unsigned(make_package: Callable[..., Path],
                                                             store: StorePaths) -> None:
    write_package(store.require_install_root() / APP)
    assert store.resolve_package(APP).publisher == UNSIGNED


@pytest.mark.parametrize("content", ["{", "[]", '{"app_id": "com.example.notes", "publisher": "../../etc"}',
                                     '{"app_id": "com.example.other", "publisher": "unsigned"}', "x" * 5000])
def test_a_damaged_install_record_fails_closed(content: str, sample_package: Path, store: StorePaths) -> None:
    install_package(sample_package, store)
    install_record_path(store.require_install_root(), APP).write_text(content)
    with pytest.raises(WeftError, match="install record"):
        read_install_record(store.require_install_root(), APP)
    with pytest.raises(WeftError, match="install record"):
        store.resolve_package(APP)
    listing = store.list_packages()
    assert listing.packages == () and "install record" in listing.skipped[0].reason


def test_app_data_dir_refuses_a_bad_publisher(store: StorePaths) -> None:
    with pytest.raises(ValueError):
        store.app_data_dir(APP, "../../etc")
    with pytest.raises(WeftError, match="not a valid app ID"):
        store.app_data_dir("../x", UNSIGNED)


def test_purge_removes_every_publishers_data(sample_package: Path, store: StorePaths) -> None:
    install_package(sample_package, store)
    (store.all_app_data(APP) / "0123456789abcdef0123456789abcdef").mkdir(parents=True)
    uninstall_package(APP, store, purge=True)
    assert not store.all_app_data(APP).exists()


# --- the system store wins ----------------------------------------------------------------

def test_the_system_store_wins_in_find_package(store: StorePaths) -> None:
    assert store.system_root is not None and store.install_root is not None
    write_package(store.system_root / APP, name="System Notes")
    write_package(store.install_root / APP, name="Impostor")
    assert store.find_package(APP) == store.system_root / APP
    assert store.resolve_package(APP).manifest.package.name == "System Notes"
    assert store.resolve_package(APP).store == "system"


def test_a_broken_system_package_is_an_error_not_a_fallback_to_the_user_store(store: StorePaths) -> None:
    assert store.system_root is not None and store.install_root is not None
    write_package(store.system_root / APP)
    (store.system_root / APP / "wapp.toml").write_text("x = " + "[" * 5000)
    write_package(store.install_root / APP, name="Impostor")
    with pytest.raises(WeftError, match="is broken"):
        store.find_package(APP)


def test_a_system_image_id_is_not_resolved_from_a_user_directory(store: StorePaths) -> None:
    assert store.install_root is not None
    store.system_images_root.mkdir(parents=True)
    (store.system_images_root / f"{APP}.wapp").write_bytes(b"shipped")
    write_package(store.install_root / APP, name="Impostor")
    with pytest.raises(WeftError, match="ships with the OS"):
        store.find_package(APP)
    assert store.list_packages().packages == ()


@pytest.mark.parametrize("system", ["package directory", "image"])
def test_install_of_a_system_apps_id_is_refused(system: str, sample_package: Path, store: StorePaths) -> None:
    assert store.system_root is not None
    if system == "image":
        store.system_images_root.mkdir(parents=True)
        (store.system_images_root / f"{APP}.wapp").write_bytes(b"shipped")
    else:
        write_package(store.system_root / APP)
    with pytest.raises(WeftError, match="ships with the OS"):
        install_package(sample_package, store)
    assert store.install_root is not None
    assert not (store.install_root / APP).exists() and not install_record_path(store.install_root, APP).exists()


def test_install_of_a_system_apps_id_is_a_clean_cli_error(sample_package: Path, store_env: dict[str, str],
                                                          tmp_path: Path) -> None:
    write_package(tmp_path / "system-apps" / APP)
    proc = subprocess.run([*PACK, "install", str(sample_package)], capture_output=True, text=True,
                          env={**os.environ, **store_env, "WEFT_SYSTEM_APP_STORE": str(tmp_path / "system-apps")})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"error: '{APP}' ships with the OS (system store); a user package cannot replace it" in proc.stderr
    listed = subprocess.run([*PACK, "list", "--json"], capture_output=True, text=True,
                            env={**os.environ, **store_env, "WEFT_SYSTEM_APP_STORE": str(tmp_path / "system-apps")})
    assert [(e["id"], e["store"]) for e in json.loads(listed.stdout)] == [(APP, "system")]


# --- through the real runtime: the guest's /data --------------------------------------------

def test_the_runtime_gives_each_publisher_its_own_data(env: Env, built_apps: dict[str, Path], tmp_path: Path,
                                                       keypair: tuple[Path, Path],
                                                       runtime_factory: Callable[..., RuntimeUnderTest]) -> None:
    app_id = "org.weft.test.owner"
    store = StorePaths.from_env(env.vars)
    signed_pkg = with_capabilities(built_apps["org.weft.test.probe"], tmp_path / "signed", app_id, ["fs:rw:app-data"])
    sign_package(signed_pkg, load_signing_key(keypair[0]))
    install_package(signed_pkg, store, trusted_key=load_verify_key(keypair[1]))
    runtime = runtime_factory(app_id)
    runtime.wait_ready()
    assert runtime.ask("files-write:/data/secret.txt:signed data") == "written"
    runtime.close()
    assert (store.app_data_dir(app_id, _fingerprint(keypair[1])) / "secret.txt").read_text() == "signed data"
    uninstall_package(app_id, store)

    env.install(with_capabilities(built_apps["org.weft.test.probe"], tmp_path / "unsigned", app_id, ["fs:rw:app-data"]))
    runtime = runtime_factory(app_id, session_id=8)
    runtime.wait_ready()
    assert runtime.ask("files-list:/data") == ""
    assert runtime.ask("files-read:/data/secret.txt").startswith("err")
    runtime.close()
