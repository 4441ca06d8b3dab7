"""QUERY_INSTALLED_APPS: the packages the store resolver says exist (weft.store.list_packages).

`weft-pack list` asks the same function, so the two never disagree. Unlike the reference, a
broken entry (bad manifest, wrong name, an id that ships with the OS) is logged and skipped;
it never fails the query for every client.
"""
from __future__ import annotations

import logging

from weft.daemons.protocol import AppInfo
from weft.store import SkippedEntry, StorePaths
from weft.terminal import terminal_safe

log = logging.getLogger("weft.appd")
# What the previous query skipped: each problem is logged when it appears, not at every query.
_previously_skipped: frozenset[SkippedEntry] = frozenset()


def installed_apps(store: StorePaths) -> list[AppInfo]:
    global _previously_skipped
    listing = store.list_packages()
    for entry in listing.skipped:
        if entry not in _previously_skipped:
            log.warning("skipping %s: %s", terminal_safe(str(entry.path)), terminal_safe(entry.reason))
    _previously_skipped = frozenset(listing.skipped)
    return [AppInfo(app_id=package.app_id, name=package.manifest.package.name,
                    version=package.manifest.package.version) for package in listing.packages]
