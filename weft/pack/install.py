"""Installing and removing packages in the user's package store (weft.store lists them).

Install is atomic: the package is copied (or unbundled) into a staging directory on the
store's file system, checked and optionally signature-verified *there*, then renamed into
place. The publisher it verified (the key's fingerprint, or `unsigned`) is recorded beside
the package, and the app's data is bound to it (weft.store). An id that ships with the OS is
refused. App data lives outside the package, so uninstall keeps it unless purged.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from nacl.signing import VerifyKey
from pydantic import BaseModel, ConfigDict

from weft.errors import WeftError
from weft.manifest import require_app_id
from weft.pack.bundle import is_bundle_path, unbundle
from weft.pack.check import check_package
from weft.pack.keys import key_id
from weft.pack.signing import verify_package
from weft.pack.tree import copy_package
from weft.store import (
    UNSIGNED,
    InstallRecord,
    StorePaths,
    install_record_path,
    publisher_from_key_id,
    write_install_record,
)

STAGING_PREFIX = ".staging-"


class InstalledApp(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: str
    name: str
    version: str
    path: Path
    publisher: str


def install_package(source: str | os.PathLike[str], store: StorePaths, *,
                    trusted_key: VerifyKey | None = None) -> InstalledApp:
    root = store.require_install_root()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
    try:
        staged = unbundle(source, staging) if is_bundle_path(source) else copy_package(source, staging / "pkg")
        manifest = check_package(staged)
        if store.is_system_app(manifest.app_id):
            raise WeftError(f"'{manifest.app_id}' ships with the OS (system store); a user package "
                            f"cannot replace it: give the package its own id")
        publisher = UNSIGNED
        if trusted_key is not None:
            verify_package(staged, trusted_key)
            publisher = publisher_from_key_id(key_id(trusted_key))
        dest = root / manifest.app_id
        data_dir = store.app_data_dir(manifest.app_id, publisher)  # resolvable before anything is moved
        if os.path.lexists(dest):
            raise WeftError(f"package '{manifest.app_id}' is already installed at {dest}; "
                            f"uninstall it first")
        # The record goes first: a package never appears with a stale record (one left by a
        # crash between the two renames names no package and is replaced by the next install).
        record = write_install_record(root, InstallRecord(app_id=manifest.app_id, publisher=publisher))
        try:
            os.rename(staged, dest)
        except OSError as exc:
            record.unlink(missing_ok=True)
            raise WeftError(f"cannot install into {dest}: {exc.strerror}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return InstalledApp(id=manifest.app_id, name=manifest.package.name,
                        version=manifest.package.version, path=dest, publisher=publisher)


def uninstall_package(app_id: str, store: StorePaths, *, purge: bool = False) -> Path:
    require_app_id(app_id)
    root = store.require_install_root()
    dest = root / app_id
    if not dest.is_dir():
        raise WeftError(f"package '{app_id}' is not installed at {dest}")
    # Rename first so the package disappears at once, then delete at leisure.
    data_dir = store.all_app_data(app_id) if purge else None
    doomed = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
    try:
        os.rename(dest, doomed / app_id)
    finally:
        shutil.rmtree(doomed, ignore_errors=True)
    install_record_path(root, app_id).unlink(missing_ok=True)
    if data_dir is not None:
        shutil.rmtree(data_dir, ignore_errors=True)
    return dest
