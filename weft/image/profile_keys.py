"""Which key signs a build of a profile: one rule for every signing key (docs/trust.md).

The `test` profile signs with a committed, public test key (git keeps no file modes, so the
private half's 0600, which the key loaders insist on, is restored); every other profile signs
with the builder's release key under keys/, made on first use with a warning and never remade.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("weft.image")

TEST_PROFILE = "test"


def key_for_profile(repo: Path, profile: str, *, test_key: Path, release_key: Path, make: Callable[[], object],
                    what: str, why: str) -> Path:
    """The private key file that signs `profile`'s builds (paths relative to `repo`); `make()`
    creates the release key when it is missing, `what`/`why` name it in the warning."""
    if profile == TEST_PROFILE:
        key = repo / test_key
        os.chmod(key, 0o600)
        return key
    key = repo / release_key
    if not key.exists():
        make()
        log.warning("image: created the %s %s. %s: keep it safe, out of git, and reuse it for every build of "
                    "this product", what, key, why)
    return key
