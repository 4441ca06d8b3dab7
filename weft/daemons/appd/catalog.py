"""QUERY_INSTALLED_APPS: what the app source can launch, from the store's one listing.

weft.store's `list_packages` answers, for the one kind of package the app source launches
(WEFT_APP_SOURCE): `verified` lists app images (system image store first; footer signed by a
trusted key, the manifest inside the one the footer names), `directory` lists package
directories. `weft-pack list` asks the same function (both kinds, each marked), so the two
never disagree. Unlike the reference, a broken entry (bad manifest, wrong name, an id that
ships with the OS, an unreadable or untrusted footer) is logged and skipped; it never fails
the query for every client. Whether an image really mounts is still weft-mountd's decision
at launch (every block, the rollback record).
"""
from __future__ import annotations

import logging

from weft.daemons.protocol import AppInfo
from weft.store import PackageKind, SkippedEntry, StorePaths
from weft.terminal import terminal_safe

log = logging.getLogger("weft.appd")
# What the previous query skipped: each problem is logged when it appears, not at every query.
_previously_skipped: dict[PackageKind, frozenset[SkippedEntry]] = {}


def installed_apps(store: StorePaths, kind: PackageKind = "directory") -> list[AppInfo]:
    """The packages of `kind` the store lists, sorted by app id."""
    listing = store.list_packages(kinds=(kind,))
    previously = _previously_skipped.get(kind, frozenset())
    for entry in listing.skipped:
        if entry not in previously:
            log.warning("skipping %s: %s", terminal_safe(str(entry.path)), terminal_safe(entry.reason))
    _previously_skipped[kind] = frozenset(listing.skipped)
    return [AppInfo(app_id=package.app_id, name=package.manifest.package.name,
                    version=package.manifest.package.version) for package in listing.packages]


def installed_images(store: StorePaths) -> list[AppInfo]:
    """The app images the store lists (what WEFT_APP_SOURCE=verified launches)."""
    return installed_apps(store, "image")
