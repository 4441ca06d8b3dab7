"""install / uninstall / list against a store in a temporary directory."""
from __future__ import annotations

import pytest
from package_support import write_package

from weft.errors import WeftError
from weft.manifest import ManifestError
from weft.pack.bundle import bundle_package
from weft.pack.install import install_package, uninstall_package
from weft.pack.keys import load_signing_key, load_verify_key
from weft.pack.signing import SignatureError, sign_package, verify_package
from weft.store import INSTALL_RECORD_SUFFIX, StorePaths


@pytest.fixture
def store(store_env) -> StorePaths:
    return StorePaths.from_env(store_env)


def _leftovers(store: StorePaths) -> list[str]:
    """What is in the store besides install records (tests/test_store_publisher.py checks those)."""
    root = store.install_root
    if root is None or not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(INSTALL_RECORD_SUFFIX))


def test_install_directory_and_list(sample_package, store):
    app = install_package(sample_package, store)
    assert app.path == store.install_root / "com.example.notes"
    assert (app.path / "wapp.toml").is_file() and (app.path / "ui" / "index.html").is_file()
    assert _leftovers(store) == ["com.example.notes"]  # no staging directory left behind
    listed = store.list_packages().packages
    assert [(a.app_id, a.manifest.package.name, a.manifest.package.version) for a in listed] == [
        ("com.example.notes", "Notes", "1.0.0")]


def test_app_data_lives_outside_the_package_and_survives_uninstall(sample_package, store):
    app = install_package(sample_package, store)
    data = store.app_data_dir(app.id, app.publisher)
    assert data.is_dir() and app.path not in data.parents
    (data / "notes.txt").write_text("keep me")
    uninstall_package(app.id, store)
    assert not app.path.exists() and (data / "notes.txt").read_text() == "keep me"
    install_package(sample_package, store)
    uninstall_package(app.id, store, purge=True)
    assert not data.exists()


def test_install_refuses_a_package_failing_check(make_package, store):
    broken = make_package()
    (broken / "app.wasm").write_bytes(b"not wasm")
    with pytest.raises(ManifestError, match="bad magic"):
        install_package(broken, store)
    assert _leftovers(store) == []


def test_install_refuses_to_replace(sample_package, store):
    install_package(sample_package, store)
    with pytest.raises(WeftError, match="already installed"):
        install_package(sample_package, store)
    assert _leftovers(store) == ["com.example.notes"]


def test_require_signature(sample_package, store, keypair, other_keypair):
    trusted = load_verify_key(keypair[1])
    with pytest.raises(SignatureError, match="not signed"):
        install_package(sample_package, store, trusted_key=trusted)
    sign_package(sample_package, load_signing_key(other_keypair[0]))
    with pytest.raises(SignatureError, match="INVALID"):
        install_package(sample_package, store, trusted_key=trusted)
    sign_package(sample_package, load_signing_key(keypair[0]))
    app = install_package(sample_package, store, trusted_key=trusted)
    verify_package(app.path, trusted)  # the installed copy still verifies
    assert _leftovers(store) == ["com.example.notes"]


def test_install_from_bundle(sample_package, store, tmp_path):
    archive = bundle_package(sample_package, tmp_path / "bundles")
    app = install_package(archive, store)
    assert (app.path / "app.wasm").read_bytes() == (sample_package / "app.wasm").read_bytes()


def test_uninstall_validates_the_id_and_presence(store):
    with pytest.raises(WeftError, match="not a valid app ID"):
        uninstall_package("../etc", store)
    with pytest.raises(WeftError, match="not installed"):
        uninstall_package("com.example.absent", store)


def test_list_one_per_id_system_store_wins(make_package, tmp_path):
    user, system = tmp_path / "user", tmp_path / "system"
    write_package(user / "com.example.notes", version="2.0")
    write_package(system / "com.example.notes", version="1.0")
    write_package(system / "com.example.alpha", app_id="com.example.alpha", name="Alpha")
    write_package(user / "com.example.zeta", app_id="com.example.zeta", name="Zeta")
    (system / "junk").mkdir()
    (system / "junk" / "wapp.toml").write_text("not toml [")
    store = StorePaths(system_root=system, install_root=user, app_data_root=tmp_path / "d", cache_root=tmp_path,
                       system_images_root=tmp_path / "no-images")
    listing = store.list_packages()
    assert [(a.app_id, a.manifest.package.version, a.store) for a in listing.packages] == [
        ("com.example.alpha", "1.0.0", "system"), ("com.example.notes", "1.0", "system"),
        ("com.example.zeta", "1.0.0", "user")]
    assert {entry.path for entry in listing.skipped} == {system / "junk", user / "com.example.notes"}


def test_install_without_a_data_location_changes_nothing(sample_package, tmp_path):
    store = StorePaths.from_env({"WEFT_APP_STORE": str(tmp_path / "store")})  # no HOME, no WEFT_APP_DATA
    with pytest.raises(WeftError, match="no app data location"):
        install_package(sample_package, store)
    assert _leftovers(store) == []
