"""What is mounted, who holds it, and reconciling that with the kernel at start-up.

References are counted per client connection (docs/mountd.md): each MOUNT_APP takes one,
UNMOUNT_APP drops one, a closed connection drops all of its own; the last one tears the
mount down. A helper that restarts finds what its predecessor left: complete, healthy
mounts are adopted (appd claims them again with MOUNT_APP), everything else is torn down.
An adopted mount nobody claims within the grace period is torn down once nothing uses it.

Not thread-safe: the server calls it from one worker thread only.
"""
from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from weft.daemons.mountd.activation import (
    DM_PREFIX,
    VERITY_OK,
    ActiveMount,
    activate,
    check_app_id_fits,
    deactivate,
    dm_name,
    parse_dm_uuid,
    teardown,
    verity_state,
)
from weft.daemons.mountd.config import MountdConfig
from weft.daemons.mountd.errors import KernelError, MountdError
from weft.daemons.mountd.kernel import Dev, Kernel, MountPoint
from weft.daemons.mountd.loopdev import LOOP_MAJOR
from weft.daemons.mountd.syscalls import APP_MOUNT_OPTIONS
from weft.daemons.protocol import (
    AppMounted,
    AppStatus,
    AppUnmounted,
    CheckApp,
    ListMounts,
    MountApp,
    MountEntry,
    MountError,
    MountReason,
    Mounts,
    UnmountApp,
)
from weft.errors import WeftError
from weft.manifest import is_valid_app_id
from weft.rollback import RollbackRecord

log = logging.getLogger("weft.mountd")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

Request = MountApp | UnmountApp | ListMounts | CheckApp
Reply = AppMounted | AppUnmounted | Mounts | AppStatus | MountError


@dataclass
class Entry:
    active: ActiveMount
    refs: Counter[int] = field(default_factory=Counter)
    # Set while nobody holds it: adopted at start-up, or a tear-down that failed. The sweep
    # retries those once the grace period has passed.
    orphan_since: float | None = None

    @property
    def total(self) -> int:
        return sum(self.refs.values())


class Registry:
    def __init__(self, kernel: Kernel, config: MountdConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.kernel = kernel
        self.config = config
        self.clock = clock
        self.entries: dict[str, Entry] = {}

    # ---- requests --------------------------------------------------------------------------

    def handle(self, conn: int, request: Request) -> Reply:
        app_id = getattr(request, "app_id", "")
        try:
            if isinstance(request, MountApp):
                return self.mount(conn, request.app_id)
            if isinstance(request, UnmountApp):
                return self.unmount(conn, request.app_id)
            if isinstance(request, CheckApp):
                return self.check(request.app_id)
            return self.list_mounts()
        except MountdError as exc:
            log.warning("%s %s refused (%s): %s", request.type, app_id, exc.reason.value, exc)
            return MountError(app_id=app_id, reason=exc.reason, message=str(exc))

    def mount(self, conn: int, app_id: str) -> AppMounted:
        check_app_id_fits(app_id)
        entry = self.entries.get(app_id)
        if entry is None:
            started = time.monotonic()
            active = activate(self.kernel, self.config, app_id)
            entry = self.entries[app_id] = Entry(active)
            log.info("mounted %s %s at %s (%.0f ms)", app_id, active.version, active.mount_path,
                     (time.monotonic() - started) * 1000)
        elif self._state(entry) != VERITY_OK:
            raise MountdError(MountReason.CORRUPTED, f"the mounted image of {app_id} has seen corrupted blocks "
                                                     f"(dm-verity status C); it is not handed out again")
        entry.refs[conn] += 1
        entry.orphan_since = None
        a = entry.active
        return AppMounted(app_id=app_id, version=a.version, root_hash=a.root_hash, mount_path=str(a.mount_path),
                          publisher=a.publisher)

    def unmount(self, conn: int, app_id: str) -> AppUnmounted:
        entry = self.entries.get(app_id)
        if entry is None:
            raise MountdError(MountReason.BAD_REQUEST, f"{app_id} is not mounted")
        if entry.refs[conn] <= 0:
            raise MountdError(MountReason.NOT_PERMITTED, f"this connection holds no reference to {app_id}")
        entry.refs[conn] -= 1
        if entry.refs[conn] == 0:
            del entry.refs[conn]
        if entry.total == 0:
            self._release(app_id, entry)
        return AppUnmounted(app_id=app_id, remaining=entry.total)

    def release_connection(self, conn: int) -> None:
        """A client went away: drop every reference it held."""
        for app_id, entry in list(self.entries.items()):
            if entry.refs.pop(conn, 0) and entry.total == 0:
                self._release(app_id, entry)

    def check(self, app_id: str) -> AppStatus:
        entry = self.entries.get(app_id)
        if entry is None:
            raise MountdError(MountReason.BAD_REQUEST, f"{app_id} is not mounted")
        return AppStatus(app_id=app_id, corrupted=self._state(entry) != VERITY_OK)

    def list_mounts(self) -> Mounts:
        return Mounts(mounts=[
            MountEntry(app_id=app_id, version=e.active.version, root_hash=e.active.root_hash,
                       mount_path=str(e.active.mount_path), refs=e.total, dm_name=e.active.dm_name, loop=e.active.loop)
            for app_id, e in sorted(self.entries.items())])

    def _state(self, entry: Entry) -> str:
        try:
            return verity_state(self.kernel, entry.active.dm_name)
        except MountdError as exc:
            log.error("cannot read the verity status of %s: %s", entry.active.dm_name, exc)
            return "?"

    def _release(self, app_id: str, entry: Entry) -> None:
        """The last reference is gone: tear down now (lazily if something still uses it)."""
        try:
            deactivate(self.kernel, self.config, entry.active, force=True)
        except MountdError as exc:
            log.error("%s; will retry", exc)
            entry.orphan_since = self.clock()
            return
        del self.entries[app_id]
        log.info("unmounted %s", app_id)

    # ---- start-up and orphans ----------------------------------------------------------------

    def reconcile(self) -> None:
        """Adopt the complete, healthy mounts a previous helper left; tear down the rest."""
        root = self.config.mount_root
        devices = {name[len(DM_PREFIX):]: dev for name, dev in self.kernel.dm_list() if name.startswith(DM_PREFIX)}
        mounts: dict[str, list[MountPoint]] = {}
        for point in self.kernel.mounts():
            if root in point.target.parents:
                mounts.setdefault(point.target.relative_to(root).parts[0], []).append(point)
        names = set(devices) | set(mounts)
        if root.is_dir():
            names |= {child.name for child in root.iterdir()}
        for app_id in sorted(names):
            if app_id in self.entries:
                continue
            here = mounts.get(app_id, [])
            active = self._adoptable(app_id, devices.get(app_id), here)
            if active is not None:
                self.entries[app_id] = Entry(active, orphan_since=self.clock())
                self._record(active)
                log.info("adopted the mount of %s %s at %s", app_id, active.version, active.mount_path)
            else:
                self._clear(app_id, app_id in devices, here)

    def _adoptable(self, app_id: str, dev: Dev | None, here: list[MountPoint]) -> ActiveMount | None:
        path = self.config.mount_root / app_id
        if dev is None or not is_valid_app_id(app_id) or len(here) != 1:
            return None
        point = here[0]
        if (point.target != path or point.dev != dev or point.fstype != "erofs"
                or not point.options >= APP_MOUNT_OPTIONS):
            return None
        name = dm_name(app_id)
        try:
            check_app_id_fits(app_id)
            table = self.kernel.dm_table(name)
            info = self.kernel.dm_info(name)
            state = verity_state(self.kernel, name)
        except (KernelError, MountdError) as exc:
            log.warning("cannot inspect %s: %s", name, exc)
            return None
        if len(table) != 1 or table[0].target_type != "verity" or state != VERITY_OK:
            return None
        fields = table[0].text.split()
        if len(fields) < 10 or fields[1] != fields[2] or not _HEX64.match(fields[8]):
            return None
        major, _, minor = fields[1].partition(":")
        named = parse_dm_uuid(info.uuid, app_id, fields[8])
        if major != str(LOOP_MAJOR) or not minor.isdigit() or named is None:
            return None
        publisher, version = named
        return ActiveMount(app_id=app_id, version=version, root_hash=fields[8], publisher=publisher, mount_path=path,
                           dm_name=name, dm_dev=dev, loop=f"/dev/loop{minor}", system=False)

    def _record(self, active: ActiveMount) -> None:
        """A helper killed between mount and record left the version unrecorded: record it now."""
        try:
            RollbackRecord(self.config.rollback_record).record(active.app_id, active.version)
        except WeftError as exc:
            log.warning("cannot record %s %s in the rollback record: %s", active.app_id, active.version, exc)

    def _clear(self, app_id: str, has_device: bool, here: list[MountPoint]) -> None:
        """Tear down whatever of `app_id` a previous helper left half set up."""
        path = self.config.mount_root / app_id
        log.warning("cleaning up what a previous weft-mountd left of %s", app_id)
        try:
            for point in sorted(here, key=lambda p: len(p.target.parts), reverse=True):  # innermost first
                teardown(self.kernel, self.config, point.target, None, force=True)
            if path.is_symlink() or (path.exists() and not path.is_dir()):
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
            if has_device:
                teardown(self.kernel, self.config, None, dm_name(app_id), force=True)
        except (MountdError, OSError) as exc:
            log.error("clean-up of %s failed: %s", app_id, exc)

    def sweep(self) -> None:
        """Tear down orphans whose grace period is over, unless something still uses them."""
        now = self.clock()
        for app_id, entry in list(self.entries.items()):
            if entry.total or entry.orphan_since is None or now - entry.orphan_since < self.config.adopt_grace_s:
                continue
            try:
                if deactivate(self.kernel, self.config, entry.active, force=False):
                    del self.entries[app_id]
                    log.info("unmounted %s (no client claimed it)", app_id)
            except MountdError as exc:
                log.error("%s; will retry", exc)

    def has_orphans(self) -> bool:
        return any(e.orphan_since is not None and not e.total for e in self.entries.values())
