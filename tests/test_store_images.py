"""Images are first-class in the one package listing (issue 8 with issue 7's "one package listing").

weft.store lists `<id>.wapp` images from the system and installed image stores beside package
directories. An image's manifest is read out of the EROFS data without mounting, and trusted
only because the footer is signed by a trusted key and names that manifest's SHA-256; every
image that fails a check is skipped with its reason, the others are still listed. appd's
catalogue lists the one kind its app source launches (WEFT_APP_SOURCE), `weft-pack list` both,
each with its kind; the tests hold the two to agree in both modes.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from package_support import write_package
from platform_support import Appd, Env

from weft.daemons import protocol
from weft.daemons.appd.catalog import installed_apps
from weft.pack.footer import read_footer, seal_footer
from weft.pack.image import build_image
from weft.pack.keys import generate_keypair, key_id, load_signing_key, load_verify_key
from weft.store import PackageKind, StorePaths

PACK = [sys.executable, "-m", "weft.pack.cli"]
SHIPPED = "org.weft.shipped"
MODES: dict[str, PackageKind] = {"verified": "image", "directory": "directory"}

# what each kind lists, as (id, name, store)
IMAGES = [("com.example.both", "Both Image", "user"), ("com.example.good", "Good Image", "user"),
          (SHIPPED, "Shipped Image", "system")]
DIRECTORIES = [("com.example.both", "Both Dir", "user"), ("com.example.dironly", "Dir Only", "user"),
               ("org.weft.sysdir", "System Dir", "system")]
# what the listing skips, by file name in the installed image store or the user's package store
SKIPPED_IMAGES = {
    f"{SHIPPED}.wapp": "ships with the OS",  # a validly signed image reusing a shipped id
    "com.example.badsig.wapp": "bad signature",
    "com.example.untrusted.wapp": "wrong key",
    "com.example.resealed.wapp": "does not match the footer's manifest digest",  # signed footer, other manifest
    "com.example.edited.wapp": "does not match the footer's manifest digest",  # manifest bytes edited in the data
    "com.example.noerofs.wapp": "not an EROFS image",
    "com.example.renamed.wapp": "it holds 'com.example.good', not 'com.example.renamed'",
    "com.example.junk.wapp": "not a .wapp image",
    "com.example.dir.wapp": "a package directory is not an image",
    "com.example.fifo.wapp": "not a regular file",
    "com.example.link.wapp": "symbolic link",
    "com.example.planted": "not an app image",  # a package directory planted in the image store
    "Bad_Id.wapp": "not named by a valid app id",
}
SKIPPED_DIRECTORIES = {SHIPPED: "ships with the OS"}


def _build(root: Path, key: Path, app_id: str, name: str, version: str = "1.0.0") -> Path:
    package = write_package(root / "src" / app_id / name.replace(" ", "-"), app_id=app_id, name=name,
                            version=version, files={"blob.bin": b"b" * 20_000})
    return build_image(package, load_signing_key(key), root / "built" / name.replace(" ", "-") / f"{app_id}.wapp",
                       progress=lambda _message: None)


def _reseal_with_other_digest(image: Path, key: Path, out: Path) -> None:
    signed = read_footer(image)
    footer = signed.footer.model_copy(update={"manifest_sha256": "0" * 64})
    out.write_bytes(image.read_bytes()[:signed.footer.footer_offset] + seal_footer(footer, load_signing_key(key)))


def _edit_manifest_in_data(image: Path, out: Path) -> None:
    raw = bytearray(image.read_bytes())
    at = raw.index(b'name = "Edited"')  # the manifest's bytes inside the EROFS data; footer untouched
    assert at < read_footer(image).footer.data_size
    raw[at + len('name = "')] ^= 0x20
    out.write_bytes(bytes(raw))


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every kind of entry the rules decide about, in all four stores (built once per module)."""
    root = tmp_path_factory.mktemp("stores")
    key, pub = generate_keypair(root / "keys")
    other_key, _ = generate_keypair(root / "other-keys")
    trusted = root / "trusted-keys"
    trusted.mkdir()
    shutil.copy(pub, trusted / "publisher.pub")
    system_images, images = root / "system-images", root / "images"
    system_apps, apps = root / "system-apps", root / "apps"
    for directory in (system_images, images, system_apps, apps):
        directory.mkdir()

    shutil.copy(_build(root, key, SHIPPED, "Shipped Image"), system_images / f"{SHIPPED}.wapp")
    good = _build(root, key, "com.example.good", "Good Image")
    shutil.copy(good, images / "com.example.good.wapp")
    shutil.copy(_build(root, key, "com.example.both", "Both Image"), images / "com.example.both.wapp")
    shutil.copy(_build(root, key, SHIPPED, "Impostor Image", "9.0.0"), images / f"{SHIPPED}.wapp")
    badsig = images / "com.example.badsig.wapp"
    shutil.copy(_build(root, key, "com.example.badsig", "Badsig"), badsig)
    raw = bytearray(badsig.read_bytes())
    raw[-16 - 64] ^= 1  # the first byte of the Ed25519 signature
    badsig.write_bytes(bytes(raw))
    shutil.copy(_build(root, other_key, "com.example.untrusted", "Untrusted"), images / "com.example.untrusted.wapp")
    _reseal_with_other_digest(_build(root, key, "com.example.resealed", "Resealed"), key,
                              images / "com.example.resealed.wapp")
    _edit_manifest_in_data(_build(root, key, "com.example.edited", "Edited"), images / "com.example.edited.wapp")
    noerofs = images / "com.example.noerofs.wapp"
    shutil.copy(_build(root, key, "com.example.noerofs", "No Erofs"), noerofs)
    with open(noerofs, "r+b") as fh:  # the EROFS superblock magic; the signed footer stays valid
        fh.seek(1024)
        fh.write(b"\0\0\0\0")
    shutil.copy(good, images / "com.example.renamed.wapp")
    (images / "com.example.junk.wapp").write_bytes(b"junk" * 100)
    (images / "com.example.dir.wapp").mkdir()
    os.mkfifo(images / "com.example.fifo.wapp")
    (images / "com.example.link.wapp").symlink_to(images / "com.example.good.wapp")
    write_package(images / "com.example.planted", app_id="com.example.planted")
    shutil.copy(good, images / "Bad_Id.wapp")
    (images / ".install-abc.tmp").write_bytes(b"half")  # an install in progress: not an entry

    write_package(system_apps / "org.weft.sysdir", app_id="org.weft.sysdir", name="System Dir")
    write_package(apps / "com.example.both", app_id="com.example.both", name="Both Dir")
    write_package(apps / "com.example.dironly", app_id="com.example.dironly", name="Dir Only")
    write_package(apps / SHIPPED, app_id=SHIPPED, name="Impostor Dir")  # shadowing a shipped image's id
    return {"HOME": str(root / "home"), "WEFT_APP_STORE": str(apps), "WEFT_SYSTEM_APP_STORE": str(system_apps),
            "WEFT_IMAGE_STORE": str(images), "WEFT_SYSTEM_IMAGE_STORE": str(system_images),
            "WEFT_TRUSTED_KEYS": str(trusted), "WEFT_APP_DATA": str(root / "data"),
            "PUBLISHER": key_id(load_verify_key(pub))[:32]}


def _pack(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*PACK, *argv], capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return proc


def _skipped(store: StorePaths, kinds: tuple[PackageKind, ...]) -> dict[str, str]:
    return {entry.path.name: entry.reason for entry in store.list_packages(kinds=kinds).skipped}


# -- the listing ------------------------------------------------------------------------------

def test_images_are_listed_by_the_manifest_their_signed_footer_names(stores: dict[str, str]) -> None:
    store = StorePaths.from_env(stores)
    listing = store.list_packages(kinds=("image",))
    assert [(p.app_id, p.manifest.package.name, p.store) for p in listing.packages] == IMAGES
    for package in listing.packages:
        footer = read_footer(package.path).footer
        assert package.kind == "image" and package.publisher == stores["PUBLISHER"]
        assert package.root_hash == footer.verity.root_hash and package.manifest.package.version == footer.version
    assert listing.packages[-1].path == Path(stores["WEFT_SYSTEM_IMAGE_STORE"]) / f"{SHIPPED}.wapp"
    skipped = _skipped(store, ("image",))
    assert skipped.keys() == SKIPPED_IMAGES.keys()
    for name, fragment in SKIPPED_IMAGES.items():
        assert fragment in skipped[name], (name, skipped[name])


def test_both_kinds_side_by_side_and_the_system_stores_win(stores: dict[str, str]) -> None:
    listing = StorePaths.from_env(stores).list_packages()
    images = [(app_id, "image", s) for app_id, _name, s in IMAGES]
    assert [(p.app_id, p.kind, p.store) for p in listing.packages] == sorted(
        images + [(app_id, "directory", s) for app_id, _name, s in DIRECTORIES])
    assert not any(p.manifest.package.name.startswith("Impostor") for p in listing.packages)
    directories = StorePaths.from_env(stores).list_packages(kinds=("directory",))
    assert [(p.app_id, p.manifest.package.name, p.store) for p in directories.packages] == DIRECTORIES
    assert {e.path.name: e.reason for e in directories.skipped}.keys() == SKIPPED_DIRECTORIES.keys()
    assert "ships with the OS" in directories.skipped[0].reason


def test_without_usable_trusted_keys_every_image_is_skipped_and_directories_still_listed(
        stores: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "bad.pub").write_text("not a key")
    for keys, reason in ((tmp_path / "empty", "no trusted publisher keys"), (tmp_path / "absent", "no trusted"),
                         (tmp_path / "broken", "the trusted keys are unusable")):
        listing = StorePaths.from_env({**stores, "WEFT_TRUSTED_KEYS": str(keys)}).list_packages()
        assert [(p.app_id, p.kind) for p in listing.packages] == [(d, "directory") for d, _n, _s in DIRECTORIES]
        reasons = {e.path.name: e.reason for e in listing.skipped if e.path.parent.name.endswith("images")}
        assert reasons.keys() == {*SKIPPED_IMAGES, "com.example.good.wapp", "com.example.both.wapp"}
        assert reason in reasons["com.example.good.wapp"] and reason in reasons["com.example.both.wapp"]


def test_listing_reads_only_the_footer_and_the_manifest(stores: dict[str, str], tmp_path: Path) -> None:
    """A flipped byte elsewhere in the data is for install and dm-verity to find, not the listing:
    the listing stays cheap (it never hashes the image)."""
    images = tmp_path / "images"
    images.mkdir()
    good = Path(stores["WEFT_IMAGE_STORE"]) / "com.example.good.wapp"
    raw = bytearray(good.read_bytes())
    raw[raw.index(b"b" * 4096) + 100] ^= 1  # in blob.bin
    (images / "com.example.good.wapp").write_bytes(bytes(raw))
    listing = StorePaths.from_env({**stores, "WEFT_IMAGE_STORE": str(images)}).list_packages(kinds=("image",))
    assert [p.app_id for p in listing.packages] == ["com.example.good", SHIPPED]


# -- resolve_package ----------------------------------------------------------------------------

def test_resolving_an_image_follows_the_same_rules(stores: dict[str, str], tmp_path: Path) -> None:
    store = StorePaths.from_env(stores)
    assert store.resolve_package("com.example.good", "image").root_hash == read_footer(
        Path(stores["WEFT_IMAGE_STORE"]) / "com.example.good.wapp").footer.verity.root_hash
    assert store.resolve_package(SHIPPED, "image").manifest.package.name == "Shipped Image"  # never the impostor
    assert store.resolve_package("com.example.both", "image").kind == "image"
    assert store.resolve_package("com.example.both").kind == "directory"
    with pytest.raises(Exception, match="bad signature"):
        store.resolve_package("com.example.badsig", "image")
    with pytest.raises(Exception, match="has no app image in"):
        store.resolve_package("com.example.dironly", "image")
    with pytest.raises(Exception, match="ships with the OS as a package directory, not an app image"):
        store.resolve_package("org.weft.sysdir", "image")
    # a broken system image is an error, never a reason to use the installed one
    system = tmp_path / "system-images"
    system.mkdir()
    (system / "com.example.good.wapp").write_bytes(b"broken")
    broken = StorePaths.from_env({**stores, "WEFT_SYSTEM_IMAGE_STORE": str(system)})
    with pytest.raises(Exception, match=f"app image {system}/com.example.good.wapp is not usable"):
        broken.resolve_package("com.example.good", "image")
    assert "com.example.good" not in [p.app_id for p in broken.list_packages(kinds=("image",)).packages]


# -- appd's catalogue and weft-pack list agree ---------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_appd_catalogue_and_weft_pack_list_agree(stores: dict[str, str], mode: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    kind = MODES[mode]
    with caplog.at_level(logging.WARNING, logger="weft.appd"):
        catalogue = installed_apps(StorePaths.from_env(stores), kind)
    everything = json.loads(_pack("list", "--json", env=stores).stdout)
    only = _pack("list", "--json", "--kind", kind, env=stores)
    of_kind = [entry for entry in everything if entry["kind"] == kind]
    assert json.loads(only.stdout) == of_kind
    assert [(a.app_id, a.name, a.version) for a in catalogue] == [(e["id"], e["name"], e["version"]) for e in of_kind]
    expected = IMAGES if kind == "image" else DIRECTORIES
    assert [(e["id"], e["name"], e["store"]) for e in of_kind] == expected
    assert all(e["publisher"] == (stores["PUBLISHER"] if kind == "image" else "unsigned") for e in of_kind)
    # the same entries skipped: appd logs them, weft-pack warns on stderr
    warnings = [line for line in only.stderr.splitlines() if line.startswith("warning: skipping ")]
    skipped = SKIPPED_IMAGES if kind == "image" else SKIPPED_DIRECTORIES
    assert len(warnings) == len(caplog.records) == len(skipped)
    assert sorted(r.getMessage() for r in caplog.records) == sorted(w.removeprefix("warning: ") for w in warnings)


def test_weft_pack_list_shows_both_kinds_with_kind_and_store(stores: dict[str, str]) -> None:
    proc = _pack("list", env=stores)
    assert proc.stdout.splitlines() == [
        "com.example.both  Both Dir  1.0.0  directory (user)",
        "com.example.both  Both Image  1.0.0  image (user)",
        "com.example.dironly  Dir Only  1.0.0  directory (user)",
        "com.example.good  Good Image  1.0.0  image (user)",
        "org.weft.shipped  Shipped Image  1.0.0  image (system)",
        "org.weft.sysdir  System Dir  1.0.0  directory (system)"]
    assert proc.stderr.count("warning: skipping ") == len(SKIPPED_IMAGES) + len(SKIPPED_DIRECTORIES)


@pytest.fixture
def appd_in(env: Env, stores: dict[str, str]) -> Iterator[list[Appd]]:
    started: list[Appd] = []
    yield started
    for appd in started:
        appd.stop()


@pytest.mark.parametrize("mode", MODES)
def test_a_running_appd_answers_with_the_listing_of_its_app_source(env: Env, stores: dict[str, str], mode: str,
                                                                   appd_in: list[Appd]) -> None:
    appd_env = {k: v for k, v in stores.items() if k != "PUBLISHER"}
    appd_in.append(Appd(env, {**appd_env, "WEFT_APP_SOURCE": mode, "WEFT_RUNTIME_POOL": "0",
                              "WEFT_MOUNTD_SOCKET": str(env.root / "no-mountd.sock")}))
    reply = appd_in[0].request(protocol.QueryInstalledApps())
    assert isinstance(reply, protocol.InstalledApps), reply
    listed = json.loads(_pack("list", "--json", "--kind", MODES[mode], env=stores).stdout)
    assert [(a.app_id, a.name, a.version) for a in reply.apps] == [(e["id"], e["name"], e["version"]) for e in listed]
    assert [a.app_id for a in reply.apps] == [app_id for app_id, _name, _store in
                                              (IMAGES if mode == "verified" else DIRECTORIES)]


def test_install_trusts_the_same_keys_as_the_listing(stores: dict[str, str], tmp_path: Path) -> None:
    """`weft-pack install FILE.wapp` without --trusted-keys checks against $WEFT_TRUSTED_KEYS, the
    directory the listing checks footers against, so what installs is what gets listed."""
    env = {**stores, "WEFT_IMAGE_STORE": str(tmp_path / "images")}
    good = Path(stores["WEFT_IMAGE_STORE"]) / "com.example.good.wapp"
    proc = _pack("install", str(good), env={**env, "WEFT_ROLLBACK_RECORD": str(tmp_path / "versions.json")})
    assert proc.stdout.startswith("installed com.example.good 1.0.0 (publisher ")
    assert [e["id"] for e in json.loads(_pack("list", "--json", "--kind", "image", env=env).stdout)] == [
        "com.example.good", SHIPPED]


# -- weft-pack info checks the footer's signature as the listing does ---------------------------
# Before: `info` described any footer as it found it, so an image signed by an unknown key or with
# a forged signature was shown like a trusted one.

def _pack_refused(*argv: str, env: dict[str, str]) -> str:
    proc = subprocess.run([*PACK, *argv], capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    assert proc.returncode == 1 and proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: "), proc.stderr
    return proc.stderr


@pytest.mark.parametrize("app_id", ["com.example.badsig", "com.example.untrusted"])
def test_info_refuses_an_installed_image_whose_signature_the_listing_refuses(stores: dict[str, str],
                                                                             app_id: str) -> None:
    message = _pack_refused("info", app_id, env=stores)
    assert SKIPPED_IMAGES[f"{app_id}.wapp"] in message and "not listed" in message
    assert f"'weft-pack info {Path(stores['WEFT_IMAGE_STORE']) / app_id}.wapp' shows its unverified footer" in message


def test_info_of_an_image_file_says_whether_a_trusted_key_signed_it(stores: dict[str, str]) -> None:
    images = Path(stores["WEFT_IMAGE_STORE"])
    good = subprocess.run([*PACK, "info", str(images / "com.example.good.wapp")], capture_output=True, text=True,
                          env={**os.environ, **stores}, timeout=60)
    assert good.returncode == 0 and good.stderr == "", good.stderr
    assert f"signature:  verified (a trusted key in {stores['WEFT_TRUSTED_KEYS']})" in good.stdout
    for name in ("com.example.untrusted.wapp", "com.example.badsig.wapp"):
        reason = SKIPPED_IMAGES[name]
        text = _pack("info", str(images / name), env=stores)
        assert f"signature:  UNVERIFIED: {reason}" in text.stdout
        assert text.stderr.startswith(f"warning: {images / name}: UNVERIFIED: {reason}")
        described = json.loads(_pack("info", "--json", str(images / name), env=stores).stdout)
        assert described["signature"] == "unverified" and reason in described["signature_problem"]
    assert json.loads(_pack("info", "--json", "com.example.good", env=stores).stdout)["signature"] == "verified"


def test_info_without_usable_trusted_keys_vouches_for_nothing(stores: dict[str, str], tmp_path: Path) -> None:
    no_keys = {**stores, "WEFT_TRUSTED_KEYS": str(tmp_path / "absent")}
    assert "no trusted publisher keys (*.pub) in" in _pack_refused("info", "com.example.good", env=no_keys)
    shipped = _pack("info", "--json", SHIPPED, "--trusted-keys", stores["WEFT_TRUSTED_KEYS"], env=no_keys)
    assert json.loads(shipped.stdout)["store"] == "system"  # the flag names the keys instead
