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


class StorePaths(BaseModel):
    """Resolved once from the environment at a program's entry point and passed down."""

    model_config = ConfigDict(frozen=True)
    roots: tuple[Path, ...]
    install_root: Path | None
    app_data_root: Path | None
    cache_root: Path

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
        return cls(roots=roots, install_root=install_root, app_data_root=app_data_root,
                   cache_root=settings.cache_dir(env))

    def require_install_root(self) -> Path:
        if self.install_root is None:
            raise WeftError("no install location: set WEFT_APP_STORE or HOME")
        return self.install_root

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
