"""The rollback record: the highest version of each app ever activated on this device.

`/var/lib/weft-mountd/versions.json` (root-owned, weft-mountd's StateDirectory) holds
`{app_id: version}`. weft-mountd raises an entry on each successful activation and refuses
an image older than the entry; only `weft-pack install --allow-downgrade` (root) lowers one.

Version order (the manifest's `Version` allows more characters than this order can rank):
a version is ordered only if it is dot-separated decimal numbers without leading zeros,
e.g. `1`, `0.1.0`, `2.10.3`. Numbers compare left to right; missing trailing numbers
count as 0, so `1.2` == `1.2.0` < `1.2.1` < `1.10`. Anything else (`1.0-beta`, `v2`,
`1.02`) is refused with VersionOrderError: rollback protection cannot rank what it cannot
order, and guessing would let an attacker pick the guess.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import RootModel, ValidationError

from weft import settings
from weft.errors import WeftError
from weft.manifest import AppId, Version

ROLLBACK_RECORD = settings.ROLLBACK_RECORD.default
RECORD_MODE = 0o644
MAX_RECORD_BYTES = 4 * 1024 * 1024

ORDERED_VERSION_RE = re.compile(r"^(0|[1-9][0-9]{0,8})(\.(0|[1-9][0-9]{0,8}))*$")


class VersionOrderError(WeftError):
    """A version that the rollback rule cannot rank."""


class RollbackError(WeftError):
    """The image is older than the highest version activated on this device."""


class RollbackRecordError(WeftError):
    """The record file is unreadable or malformed; callers fail closed on it."""


def version_key(version: str) -> tuple[int, ...]:
    """The comparable form of a version, trailing zeros dropped (`1.2.0` -> (1, 2))."""
    if not ORDERED_VERSION_RE.fullmatch(version):
        raise VersionOrderError(
            f"version '{version}' cannot be ordered: rollback protection needs dot-separated "
            f"decimal numbers without leading zeros (e.g. 1.4.2)")
    parts = [int(p) for p in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as `a` is older than, the same as, or newer than `b`."""
    ka, kb = version_key(a), version_key(b)
    return (ka > kb) - (ka < kb)


class VersionRecord(RootModel[dict[AppId, Version]]):
    """The file's content: app id -> highest version activated."""


class RollbackRecord:
    """Reads and writes one record file; every change is locked and written atomically."""

    def __init__(self, path: Path = ROLLBACK_RECORD) -> None:
        self.path = path

    def load(self) -> dict[str, str]:
        """The current entries; a missing file is an empty record, a malformed one an error."""
        try:
            with open(self.path, "rb") as fh:
                data = fh.read(MAX_RECORD_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise RollbackRecordError(f"cannot read the rollback record {self.path}: {exc.strerror}") from None
        if len(data) > MAX_RECORD_BYTES:
            raise RollbackRecordError(f"the rollback record {self.path} is larger than {MAX_RECORD_BYTES} bytes")
        try:
            return dict(VersionRecord.model_validate_json(data).root)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "record"
            raise RollbackRecordError(f"the rollback record {self.path} is malformed ({where}: {first['msg']}); "
                                      f"refusing to guess the versions it held") from None

    def highest(self, app_id: str) -> str | None:
        return self.load().get(app_id)

    def check(self, app_id: str, version: str) -> None:
        """Raise RollbackError if `version` is older than the recorded highest."""
        version_key(version)
        recorded = self.highest(app_id)
        if recorded is not None and compare_versions(version, recorded) < 0:
            raise RollbackError(f"{app_id} {version} is older than version {recorded}, already activated on "
                                f"this device; an administrator can allow it with "
                                f"'weft-pack install --allow-downgrade' (as root)")

    def record(self, app_id: str, version: str) -> None:
        """Raise the entry to `version`; never lowers it (a lower version is left as is)."""
        version_key(version)
        with self._locked():
            entries = self.load()
            current = entries.get(app_id)
            if current is not None and compare_versions(version, current) <= 0:
                return
            entries[app_id] = version
            self._write(entries)

    def allow_downgrade(self, app_id: str, version: str) -> None:
        """Set the entry to `version` even if lower: the administrator's explicit downgrade."""
        version_key(version)
        with self._locked():
            entries = self.load()
            if entries.get(app_id) == version:
                return
            entries[app_id] = version
            self._write(entries)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise read-modify-write between mountd and weft-pack (flock on the directory)."""
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise RollbackRecordError(f"cannot open {self.path.parent}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, entries: dict[str, str]) -> None:
        body = json.dumps(dict(sorted(entries.items())), indent=1).encode() + b"\n"
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, RECORD_MODE)
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fd, RECORD_MODE)  # the umask must not narrow it
                fh.write(body)
                fh.flush()
                os.fsync(fd)
            os.rename(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise RollbackRecordError(f"cannot write the rollback record {self.path}: {exc.strerror}") from None
