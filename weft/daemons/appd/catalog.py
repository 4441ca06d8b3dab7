"""QUERY_INSTALLED_APPS: the packages in the store roots, first root wins (reference §2.7).

Unlike the reference, a directory whose name is not the manifest's app id, or whose
manifest is invalid, is skipped (and logged) instead of listed.
"""
from __future__ import annotations

import logging

from weft.daemons.protocol import AppInfo
from weft.manifest import MANIFEST_NAME, ManifestError, is_valid_app_id, load_manifest
from weft.store import StorePaths

log = logging.getLogger("weft.appd")


def installed_apps(store: StorePaths) -> list[AppInfo]:
    found: dict[str, AppInfo] = {}
    for root in store.roots:
        try:
            entries = sorted(root.iterdir())
        except OSError:
            continue
        for package in entries:
            if package.name in found or not is_valid_app_id(package.name):
                continue
            if not (package / MANIFEST_NAME).is_file():
                continue
            try:
                manifest = load_manifest(package)
            except ManifestError as exc:
                log.warning("skipping %s: %s", package, exc)
                continue
            if manifest.app_id != package.name:
                log.warning("skipping %s: it holds %s", package, manifest.app_id)
                continue
            found[package.name] = AppInfo(app_id=manifest.app_id, name=manifest.package.name,
                                          version=manifest.package.version)
    return sorted(found.values(), key=lambda app: app.app_id)
