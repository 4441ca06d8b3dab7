"""The app image stores: one signed `.wapp` per app, stored as `<root>/<app_id>.wapp`.

Two stores (weft.store): the system image store inside the verity-protected root (apps that
ship with the OS, read-only) and the installed store on the state partition, which
weft-mountd activates images from. The system store wins: an id it holds is never installed.
Which images exist, for appd's catalogue and `weft-pack list`, is weft.store's one listing
(`StorePaths.list_packages`); this module installs, finds and removes image files.

Install copies the image into a temporary file in the store directory, verifies that copy
completely (footer, signature by a trusted key, every data and hash block, the manifest
inside), applies the rollback rule, and only then renames it over `<app_id>.wapp`. Whatever
fails, the previous image stays in place and no temporary file is left behind.
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from nacl.signing import VerifyKey
from pydantic import BaseModel, ConfigDict

from weft.errors import WeftError
from weft.pack.footer import (
    Footer,
    FooterError,
    SignedFooter,
    read_footer,
    require_trusted_keys,
    verify_footer_signature,
)
from weft.pack.image import verify_image
from weft.rollback import RollbackError, RollbackRecord, RollbackRecordError, compare_versions, version_key
from weft.store import StorePaths, image_file, publisher_from_key_id

log = logging.getLogger("weft.pack")

TEMP_PREFIX = ".install-"
IMAGE_MODE = 0o644
COPY_CHUNK = 1 << 20


class ImageStoreError(WeftError):
    """An image cannot be installed, found or removed."""


StoreName = Literal["system", "installed"]


class StoredImage(BaseModel):
    """One image in a store, described from its footer. Its signature is checked (as the listing
    checks it); its blocks are not: install, verify-image and weft-mountd check every block."""

    model_config = ConfigDict(frozen=True)
    id: str
    version: str
    store: StoreName | None  # None: a file outside the stores
    path: Path
    publisher: str
    key_id: str
    root_hash: str
    file_size: int
    data_size: int
    hash_size: int
    signature: Literal["verified", "unverified"]  # by a trusted key, or not: then nothing above is vouched for
    signature_problem: str | None = None  # why it is unverified

    @classmethod
    def from_footer(cls, signed: SignedFooter, path: Path, store: StoreName | None,
                    signature_problem: str | None = None) -> StoredImage:
        f = signed.footer
        return cls(id=f.app_id, version=f.version, store=store, path=path, publisher=publisher_of(f),
                   key_id=f.key_id, root_hash=f.verity.root_hash, file_size=signed.file_size,
                   data_size=f.data_size, hash_size=f.verity.hash_size,
                   signature="verified" if signature_problem is None else "unverified",
                   signature_problem=signature_problem)


def publisher_of(footer: Footer) -> str:
    return publisher_from_key_id(footer.key_id)


def _store_roots(store: StorePaths) -> list[tuple[StoreName, Path]]:
    roots: list[tuple[StoreName, Path]] = [("system", store.system_images_root)]
    if store.images_root is not None:
        roots.append(("installed", store.images_root))
    return roots


def describe_image(path: Path, store: StoreName | None, trusted_keys_dir: Path,
                   expected_id: str | None = None) -> StoredImage:
    """The footer of `path`, marked unverified (with the reason) unless a key in `trusted_keys_dir`
    signed it; FooterError if unreadable or misnamed."""
    signed = read_footer(path)
    if expected_id is not None and signed.footer.app_id != expected_id:
        raise FooterError(f"{path} holds {signed.footer.app_id}, not {expected_id}")
    try:
        verify_footer_signature(signed, require_trusted_keys(trusted_keys_dir))
    except WeftError as exc:  # a bad or unknown signature, or no usable keys
        return StoredImage.from_footer(signed, path, store, signature_problem=str(exc))
    return StoredImage.from_footer(signed, path, store)


def find_image(app_id: str, store: StorePaths, trusted_keys_dir: Path | None = None) -> StoredImage | None:
    """The image that runs for `app_id`: the system store's if it has one, else the installed one.
    ImageStoreError if a trusted key (default: the store's, WEFT_TRUSTED_KEYS) did not sign its
    footer: such an image is neither listed nor mounted, so it is not described as if it were."""
    for name, root in _store_roots(store):
        path = image_file(root, app_id)
        if path.is_file():
            image = describe_image(path, name, trusted_keys_dir or store.trusted_keys_dir, expected_id=app_id)
            if image.signature_problem is not None:
                raise ImageStoreError(f"{path}: {image.signature_problem}; it is not listed and weft-mountd "
                                      f"does not mount it ('weft-pack info {path}' shows its unverified footer)")
            return image
    return None


def system_holds(app_id: str, store: StorePaths) -> bool:
    """Whether an app with this id ships with the OS (as an image or a directory package)."""
    return store.is_system_app(app_id)


def install_image(source: str | os.PathLike[str], store: StorePaths, trusted_keys: Sequence[VerifyKey], *,
                  allow_downgrade: bool = False) -> StoredImage:
    """Verify `source` completely and put it into the installed image store atomically."""
    if not trusted_keys:
        raise ImageStoreError("no trusted publisher keys: nothing could verify the image")
    root = store.require_images_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageStoreError(f"cannot create the image store {root}: {exc.strerror}") from None
    temp = _copy_into(Path(source), root)
    try:
        log.info("install: verifying %s", source)
        signed = _verify_copy(temp, Path(source), trusted_keys)
        footer = signed.footer
        if system_holds(footer.app_id, store):
            raise ImageStoreError(f"{footer.app_id} ships with the OS (system store); an installed app "
                                  f"cannot replace it")
        dest = image_file(root, footer.app_id)
        _apply_rollback_rule(footer, dest, RollbackRecord(store.rollback_record), allow_downgrade)
        try:
            os.rename(temp, dest)
        except OSError as exc:
            raise ImageStoreError(f"cannot install into {dest}: {exc.strerror}") from None
        _fsync_dir(root)
    finally:
        temp.unlink(missing_ok=True)
    return StoredImage.from_footer(signed, dest, "installed")


def _verify_copy(temp: Path, source: Path, trusted_keys: Sequence[VerifyKey]) -> SignedFooter:
    """verify_image on the copy (what gets installed), its errors naming the source file."""
    try:
        return verify_image(temp, trusted_keys)
    except WeftError as exc:
        message = str(exc).replace(str(temp), str(source))
        if message == str(exc):
            raise
        raise type(exc)(message) from None


def _copy_into(source: Path, root: Path) -> Path:
    """A durable copy of `source` in a fresh temporary file in `root` (same file system)."""
    try:
        src_fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ImageStoreError(f"cannot read {source}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(src_fd).st_mode):
        os.close(src_fd)
        raise ImageStoreError(f"{source} is not a regular file (give a .wapp image)")
    with os.fdopen(src_fd, "rb") as src:
        try:
            fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=root)
        except OSError as exc:
            raise ImageStoreError(f"cannot write to the image store {root}: {exc.strerror}") from None
        temp = Path(name)
        try:
            with os.fdopen(fd, "wb") as dst:
                os.fchmod(fd, IMAGE_MODE)
                shutil.copyfileobj(src, dst, COPY_CHUNK)
                dst.flush()
                os.fsync(fd)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise ImageStoreError(f"cannot copy {source} into {root}: {exc.strerror}") from None
    return temp


def _apply_rollback_rule(footer: Footer, dest: Path, record: RollbackRecord, allow_downgrade: bool) -> None:
    """Refuse an image older than what this device activated or has installed, unless the
    administrator allows the downgrade (which lowers the rollback record: root only)."""
    app_id, version = footer.app_id, footer.version
    version_key(version)  # an image whose version cannot be ordered is never installed
    recorded = record.highest(app_id)
    installed = _installed_version(dest, app_id)
    older_than_record = recorded is not None and compare_versions(version, recorded) < 0
    older_than_installed = installed is not None and compare_versions(version, installed) < 0
    if not (older_than_record or older_than_installed):
        return
    newer = recorded if older_than_record else installed
    if not allow_downgrade:
        what = "already activated on this device" if older_than_record else "installed"
        raise RollbackError(f"{app_id} {version} is older than version {newer} ({what}); an administrator "
                            f"can install it with --allow-downgrade (as root on the device)")
    if older_than_record:
        try:
            record.allow_downgrade(app_id, version)
        except RollbackRecordError as exc:
            raise ImageStoreError(f"{exc}; --allow-downgrade lowers the device's rollback record, which "
                                  f"only root can change: run it as root on the device") from None
    log.warning("install: downgrading %s from %s to %s (--allow-downgrade)", app_id, newer, version)


def _installed_version(dest: Path, app_id: str) -> str | None:
    """The orderable version of the image now in place, if it has one (else it is just replaced)."""
    if not dest.exists():
        return None
    try:
        footer = read_footer(dest).footer
        if footer.app_id != app_id:
            return None
        version_key(footer.version)
    except WeftError:
        return None
    return footer.version


def uninstall_image(app_id: str, store: StorePaths) -> Path | None:
    """Remove the installed image of `app_id` (broken or not); None if there is none.
    App data is not touched here."""
    root = store.require_images_root()
    path = image_file(root, app_id)
    if not path.exists():
        return None
    try:
        path.unlink()
    except OSError as exc:
        raise ImageStoreError(f"cannot remove {path}: {exc.strerror}") from None
    _fsync_dir(root)
    return path


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
