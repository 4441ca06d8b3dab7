"""Installing, removing and listing packages in the user's package store.

Install is atomic: the package is copied (or unbundled) into a staging directory on the
store's file system, checked and optionally signature-verified *there*, then renamed into
place. App data lives outside the package (weft.store), so uninstall keeps it unless purged.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from nacl.signing import VerifyKey
from pydantic import BaseModel, ConfigDict

from weft.errors import WeftError
from weft.manifest import MANIFEST_NAME, ManifestError, load_manifest, require_app_id
from weft.pack.bundle import is_bundle_path, unbundle
from weft.pack.check import check_package
from weft.pack.signing import verify_package
from weft.pack.tree import copy_package
from weft.store import StorePaths

STAGING_PREFIX = ".staging-"


class InstalledApp(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: str
    name: str
    version: str
    path: Path


def install_package(source: str | os.PathLike[str], store: StorePaths, *,
                    trusted_key: VerifyKey | None = None) -> InstalledApp:
    root = store.require_install_root()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
    try:
        staged = unbundle(source, staging) if is_bundle_path(source) else copy_package(source, staging / "pkg")
        manifest = check_package(staged)
        if trusted_key is not None:
            verify_package(staged, trusted_key)
        dest = root / manifest.app_id
        data_dir = store.app_data_dir(manifest.app_id)  # resolvable before anything is moved
        if dest.exists():
            raise WeftError(f"package '{manifest.app_id}' is already installed at {dest}; "
                            f"uninstall it first")
        try:
            os.rename(staged, dest)
        except OSError as exc:
            raise WeftError(f"cannot install into {dest}: {exc.strerror}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return InstalledApp(id=manifest.app_id, name=manifest.package.name,
                        version=manifest.package.version, path=dest)


def uninstall_package(app_id: str, store: StorePaths, *, purge: bool = False) -> Path:
    require_app_id(app_id)
    root = store.require_install_root()
    dest = root / app_id
    if not dest.is_dir():
        raise WeftError(f"package '{app_id}' is not installed at {dest}")
    # Rename first so the package disappears at once, then delete at leisure.
    data_dir = store.app_data_dir(app_id) if purge else None
    doomed = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
    try:
        os.rename(dest, doomed / app_id)
    finally:
        shutil.rmtree(doomed, ignore_errors=True)
    if data_dir is not None:
        shutil.rmtree(data_dir, ignore_errors=True)
    return dest


def list_packages(store: StorePaths) -> list[InstalledApp]:
    """Packages in every store root; the first root holding an id wins (reference §2.7)."""
    seen: dict[str, InstalledApp] = {}
    for root in store.roots:
        if not root.is_dir():
            continue
        found = []
        for entry in sorted(root.iterdir()):
            if entry.name.startswith(".") or not (entry / MANIFEST_NAME).is_file():
                continue
            try:
                manifest = load_manifest(entry)
            except ManifestError:
                continue
            if manifest.app_id not in seen:
                found.append(InstalledApp(id=manifest.app_id, name=manifest.package.name,
                                          version=manifest.package.version, path=entry))
        for app in sorted(found, key=lambda a: a.id):
            seen.setdefault(app.id, app)
    return list(seen.values())
