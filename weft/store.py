"""Where packages, app data and caches live: the one path resolver for every component.

Deviation from the reference (§11.2 item 12): app data lives *outside* the package
directory, so uninstalling or re-verifying a package never touches user data.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from weft import settings
from weft.errors import WeftError
from weft.manifest import MANIFEST_NAME, require_app_id

SYSTEM_STORE = Path("/usr/share/weft/apps")
# Signed `.wapp` images: shipped with the OS in the verity-protected root (read-only), and
# installed ones on the state partition (docs/weft-pack.md, "App images").
SYSTEM_IMAGE_STORE = settings.SYSTEM_IMAGE_STORE.default
DEVICE_IMAGE_STORE = Path("/var/lib/weft/images")
# The publisher keys the device trusts, on the verity-protected root.
TRUSTED_KEYS_DIR = Path("/usr/share/weft/trusted-keys")


class StorePaths(BaseModel):
    """Resolved once from the environment at a program's entry point and passed down."""

    model_config = ConfigDict(frozen=True)
    roots: tuple[Path, ...]
    install_root: Path | None
    app_data_root: Path | None
    cache_root: Path
    images_root: Path | None = None
    system_images_root: Path = SYSTEM_IMAGE_STORE
    rollback_record: Path = settings.ROLLBACK_RECORD.default

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "StorePaths":
        data_home = settings.data_home(env)
        user_store = data_home / "weft/apps" if data_home else None
        store = settings.APP_STORE.read(env)
        if store is not None:
            roots: tuple[Path, ...] = (store,)
            install_root: Path | None = store
        else:
            roots = tuple(p for p in (user_store, SYSTEM_STORE) if p is not None)
            install_root = user_store
        app_data_root = settings.APP_DATA.read(env) or (data_home / "weft/app-data" if data_home else None)
        system_images = settings.SYSTEM_IMAGE_STORE.read(env)
        images_root = settings.IMAGE_STORE.read(env) or (
            DEVICE_IMAGE_STORE if system_images.is_dir()  # on WEFT OS: the store weft-mountd reads
            else data_home / "weft/images" if data_home else None)
        return cls(roots=roots, install_root=install_root, app_data_root=app_data_root,
                   cache_root=settings.cache_dir(env), images_root=images_root,
                   system_images_root=system_images, rollback_record=settings.ROLLBACK_RECORD.read(env))

    def require_install_root(self) -> Path:
        if self.install_root is None:
            raise WeftError("no install location: set WEFT_APP_STORE or HOME")
        return self.install_root

    def require_images_root(self) -> Path:
        if self.images_root is None:
            raise WeftError("no image store location: set WEFT_IMAGE_STORE or HOME")
        return self.images_root

    def find_package(self, app_id: str) -> Path:
        """First store root holding `<app_id>/wapp.toml`."""
        require_app_id(app_id)
        for root in self.roots:
            candidate = root / app_id
            if (candidate / MANIFEST_NAME).is_file():
                return candidate
        raise WeftError(f"package '{app_id}' not found in any package store "
                        f"({', '.join(map(str, self.roots)) or 'none configured'})")

    def app_data_dir(self, app_id: str) -> Path:
        require_app_id(app_id)
        if self.app_data_root is None:
            raise WeftError("no app data location: set WEFT_APP_DATA or HOME")
        return self.app_data_root / app_id
