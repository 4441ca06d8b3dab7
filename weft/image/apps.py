"""The apps that ship with the OS: built from source and signed at image build time.

`weft image build` calls `prepare_apps` before mkosi; mkosi.postinst.chroot installs the
result into the system image store `/usr/share/weft/images/` and the signing key's public
half into `/usr/share/weft/trusted-keys/`. Like build/wheels, build/apps is rebuilt on every
image build:

    build/apps/images/<app_id>.wapp     one signed image per shipped app
    build/apps/trusted-keys/<name>.pub  the public half of the key that signed them
    build/apps/SHA256SUMS               marks a complete set (postinst checks it)

Signing keys: the `test` profile signs with the committed test key (tests/vm/keys/weft-test.key);
the default profile with the builder's release key `keys/weft-release.key`, made on first
build (as `mkosi genkey` makes mkosi.key) and kept out of git. An image trusts the key that
signed its apps, plus the extra publisher keys committed in image/trusted-keys/.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from weft.errors import WeftError
from weft.image.guests import build_package
from weft.image.profile_keys import key_for_profile
from weft.pack.image import build_image, verify_image
from weft.pack.keys import generate_keypair, load_signing_key
from weft.store import image_file

log = logging.getLogger("weft.image")

SHIPPED_APPS = ("org.weft.demo.counter", "org.weft.demo.notes")  # under examples/
TEST_KEY = Path("tests/vm/keys/weft-test.key")
RELEASE_KEY_DIR = Path("keys")
RELEASE_KEY_STEM = "weft-release"
SUMS_NAME = "SHA256SUMS"


def shipped_sources(repo: Path) -> list[Path]:
    return [repo / "examples" / app_id for app_id in SHIPPED_APPS]


def release_key_path(repo: Path) -> Path:
    return repo / RELEASE_KEY_DIR / f"{RELEASE_KEY_STEM}.key"


def generate_release_key(repo: Path) -> tuple[Path, Path]:
    """`weft image genkey`: keys/weft-release.key (0600, in a 0700 directory) and its .pub."""
    key_dir = repo / RELEASE_KEY_DIR
    key_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(key_dir, 0o700)
    return generate_keypair(key_dir, RELEASE_KEY_STEM)


def signing_key_for(repo: Path, profile: str) -> Path:
    """The key that signs the shipped apps of `profile`; the release key is made if missing."""
    return key_for_profile(repo, profile, test_key=TEST_KEY, release_key=release_key_path(repo).relative_to(repo),
                           make=lambda: generate_release_key(repo), what="release signing key",
                           why="It signs the apps this image ships and the image trusts it")


def _progress(name: str) -> Callable[[str], None]:
    return lambda message: log.debug("image: %s: %s", name, message)


def prepare_apps(sources: Sequence[Path], key_path: Path, dest: Path, *, cache: Path, timestamp: int) -> list[Path]:
    """Build each app source into a signed image under `dest` (emptied first); see the module doc."""
    key = load_signing_key(key_path)
    shutil.rmtree(dest, ignore_errors=True)
    images_dir, keys_dir = dest / "images", dest / "trusted-keys"
    images_dir.mkdir(parents=True)
    keys_dir.mkdir()
    images = []
    with tempfile.TemporaryDirectory(prefix="weft-apps-") as work:
        for src in sources:
            log.info("image: building and signing %s", src.name)
            package = build_package(src, Path(work), cache)
            image = build_image(package, key, image_file(images_dir, src.name), timestamp=timestamp,
                                progress=_progress(src.name))
            footer = verify_image(image, [key.verify_key]).footer
            if footer.app_id != src.name:
                raise WeftError(f"{src} declares the id {footer.app_id}; an app source directory is named "
                                f"after its app id")
            images.append(image)
    public = keys_dir / f"{key_path.stem}.pub"
    public.write_text(bytes(key.verify_key).hex())
    _write_sums(dest, [*images, public])
    return images


def _write_sums(dest: Path, files: Sequence[Path]) -> None:
    lines = [f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.relative_to(dest)}\n" for f in files]
    (dest / SUMS_NAME).write_text("".join(lines))
