"""weft-mountd references and reconcile: per-connection counting, shared mounts, tear-down of
the last reference, adoption of what a killed helper left and removal of half-done set-ups."""
from __future__ import annotations

from pathlib import Path

import pytest
from mountd_support import APP, OTHER_APP, Device

from weft.daemons.mountd.activation import ActiveMount, activate, dm_name
from weft.daemons.mountd.devmapper import DmTarget
from weft.daemons.mountd.registry import Registry
from weft.daemons.mountd.syscalls import MountPoint
from weft.daemons.protocol import (
    AppMounted,
    AppStatus,
    AppUnmounted,
    CheckApp,
    ListMounts,
    MountApp,
    MountError,
    MountReason,
    Mounts,
    UnmountApp,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(device: Device, clock: Clock) -> Registry:
    return Registry(device.kernel, device.config, clock)


def _mounted(registry: Registry, conn: int, app_id: str = APP) -> AppMounted:
    reply = registry.handle(conn, MountApp(app_id=app_id))
    assert isinstance(reply, AppMounted), reply
    return reply


def _error(reply: object, reason: MountReason) -> MountError:
    assert isinstance(reply, MountError) and reply.reason == reason, reply
    return reply


def test_second_mount_reuses_the_first(registry: Registry, device: Device) -> None:
    device.install()
    first = _mounted(registry, 1)
    second = _mounted(registry, 2)
    assert first == second and first.mount_path == str(device.config.mount_root / APP)
    assert device.kernel.calls.count("attach_loop") == 1
    (entry,) = registry.list_mounts().mounts
    assert (entry.refs, entry.dm_name, entry.loop, entry.version) == (2, dm_name(APP), "/dev/loop0", "1.0.0")


def test_last_unmount_tears_down(registry: Registry, device: Device) -> None:
    device.install()
    _mounted(registry, 1)
    _mounted(registry, 1)
    _mounted(registry, 2)
    assert registry.handle(1, UnmountApp(app_id=APP)) == AppUnmounted(app_id=APP, remaining=2)
    assert registry.handle(2, UnmountApp(app_id=APP)) == AppUnmounted(app_id=APP, remaining=1)
    assert device.kernel.leftovers() != []
    assert registry.handle(1, UnmountApp(app_id=APP)) == AppUnmounted(app_id=APP, remaining=0)
    assert device.kernel.leftovers() == [] and registry.entries == {}


def test_a_connection_cannot_drop_anothers_reference(registry: Registry, device: Device) -> None:
    device.install()
    _mounted(registry, 1)
    _error(registry.handle(2, UnmountApp(app_id=APP)), MountReason.NOT_PERMITTED)
    _error(registry.handle(2, UnmountApp(app_id=OTHER_APP)), MountReason.BAD_REQUEST)
    assert registry.entries[APP].total == 1


def test_closed_connection_drops_all_its_references(registry: Registry, device: Device) -> None:
    device.install()
    device.install(OTHER_APP)
    _mounted(registry, 1)
    _mounted(registry, 1)
    _mounted(registry, 1, OTHER_APP)
    _mounted(registry, 2, OTHER_APP)
    registry.release_connection(1)
    assert list(registry.entries) == [OTHER_APP] and registry.entries[OTHER_APP].total == 1
    registry.release_connection(2)
    assert device.kernel.leftovers() == []


def test_failed_mount_takes_no_reference(registry: Registry, device: Device) -> None:
    _error(registry.handle(1, MountApp(app_id=APP)), MountReason.NOT_INSTALLED)
    assert registry.entries == {}


def test_check_app_reports_corruption_and_a_corrupted_mount_is_not_handed_out(registry: Registry,
                                                                               device: Device) -> None:
    device.install()
    _mounted(registry, 1)
    assert registry.handle(1, CheckApp(app_id=APP)) == AppStatus(app_id=APP, corrupted=False)
    device.kernel.dms[dm_name(APP)].status = "C"  # a read hit a bad block since
    assert registry.handle(1, CheckApp(app_id=APP)) == AppStatus(app_id=APP, corrupted=True)
    _error(registry.handle(2, MountApp(app_id=APP)), MountReason.CORRUPTED)
    assert registry.entries[APP].total == 1
    _error(registry.handle(1, CheckApp(app_id=OTHER_APP)), MountReason.BAD_REQUEST)


def test_list_mounts(registry: Registry, device: Device) -> None:
    assert registry.handle(1, ListMounts()) == Mounts(mounts=[])
    device.install()
    _mounted(registry, 1)
    reply = registry.handle(1, ListMounts())
    assert isinstance(reply, Mounts) and [m.app_id for m in reply.mounts] == [APP]


def test_a_failed_teardown_is_retried_by_the_sweep(registry: Registry, device: Device, clock: Clock) -> None:
    device.install()
    _mounted(registry, 1)
    device.kernel.fail_next["umount"] = 1  # EPERM: not busy, just failing
    registry.release_connection(1)
    assert APP in registry.entries and registry.has_orphans()
    clock.now += device.config.adopt_grace_s
    registry.sweep()
    assert registry.entries == {} and device.kernel.leftovers() == []


# ---- reconcile at start-up ---------------------------------------------------------------------

def _left_by_a_killed_helper(device: Device, app_id: str = APP) -> ActiveMount:
    device.install(app_id)
    return activate(device.kernel, device.config, app_id)


def test_reconcile_adopts_a_complete_mount(device: Device, clock: Clock) -> None:
    left = _left_by_a_killed_helper(device)
    registry = Registry(device.kernel, device.config, clock)
    registry.reconcile()
    (entry,) = registry.list_mounts().mounts
    assert (entry.app_id, entry.version, entry.refs, entry.loop) == (APP, "1.0.0", 0, "/dev/loop0")
    assert registry.entries[APP].active == left  # publisher and version come back from the dm uuid
    # appd claims it again: no second activation
    assert _mounted(registry, 7).publisher == left.publisher
    assert device.kernel.calls.count("attach_loop") == 1 and not registry.has_orphans()
    registry.release_connection(7)
    assert device.kernel.leftovers() == []


def test_unclaimed_adopted_mount_goes_after_the_grace_period_unless_busy(device: Device, clock: Clock) -> None:
    _left_by_a_killed_helper(device)
    registry = Registry(device.kernel, device.config, clock)
    registry.reconcile()
    registry.sweep()
    assert APP in registry.entries  # still within the grace period
    clock.now += device.config.adopt_grace_s
    device.kernel.busy_umounts[device.config.mount_root / APP] = -1  # a running app still uses it
    registry.sweep()
    assert APP in registry.entries and device.kernel.mount_list
    del device.kernel.busy_umounts[device.config.mount_root / APP]
    registry.sweep()
    assert registry.entries == {} and device.kernel.leftovers() == []


def test_reconcile_removes_a_device_without_a_mount(device: Device, clock: Clock) -> None:
    _left_by_a_killed_helper(device)
    device.kernel.umount(device.config.mount_root / APP)  # killed half-way through a tear-down
    Registry(device.kernel, device.config, clock).reconcile()
    assert device.kernel.leftovers() == [] and not (device.config.mount_root / APP).exists()


def test_reconcile_removes_a_loaded_but_never_resumed_device(device: Device, clock: Clock) -> None:
    """Killed right after DM_TABLE_LOAD: no undo ran, the table holds the loop device."""
    kernel = device.kernel
    with open(device.install(), "rb") as image:
        loop = kernel.attach_loop(image.fileno(), 8192, "x")
    kernel.dm_create(dm_name(APP), "WEFT-APP-x")
    kernel.dm_load(dm_name(APP), [DmTarget(0, 8, "verity", f"1 7:{loop.index} 7:{loop.index} 4096 4096 1 2 sha256 "
                                                           f"{'0' * 64} {'0' * 64}")])
    kernel.release_loop(loop)  # the process died: its descriptors closed
    assert kernel.leftovers() != []
    Registry(kernel, device.config, clock).reconcile()
    assert kernel.leftovers() == []


def test_reconcile_tears_down_a_mount_with_wrong_options(device: Device, clock: Clock) -> None:
    _left_by_a_killed_helper(device)
    point = device.kernel.mount_list[0]
    device.kernel.mount_list[0] = MountPoint(point.target, point.dev, point.fstype, point.source,
                                             frozenset({"ro", "nodev"}))  # exec and suid allowed: not ours
    Registry(device.kernel, device.config, clock).reconcile()
    assert device.kernel.leftovers() == []


def test_reconcile_tears_down_a_mount_of_another_device(device: Device, clock: Clock) -> None:
    _left_by_a_killed_helper(device)
    point = device.kernel.mount_list[0]
    device.kernel.mount_list[0] = MountPoint(point.target, (8, 1), "ext4", "/dev/sda1", point.options)
    Registry(device.kernel, device.config, clock).reconcile()
    assert device.kernel.leftovers() == []


def test_reconcile_tears_down_a_corrupted_device(device: Device, clock: Clock) -> None:
    _left_by_a_killed_helper(device)
    device.kernel.dms[dm_name(APP)].status = "C"
    registry = Registry(device.kernel, device.config, clock)
    registry.reconcile()
    assert registry.entries == {} and device.kernel.leftovers() == []


def test_reconcile_removes_stray_entries_under_the_mount_root(device: Device, clock: Clock) -> None:
    root = device.config.mount_root
    (root / APP).mkdir(parents=True)
    (root / "not-an-app").write_text("x")
    (root / OTHER_APP).symlink_to("/etc")
    Registry(device.kernel, device.config, clock).reconcile()
    assert list(root.iterdir()) == []


def test_reconcile_records_the_version_of_an_adopted_mount(device: Device, clock: Clock) -> None:
    from weft.rollback import RollbackRecord
    _left_by_a_killed_helper(device)
    device.config.rollback_record.unlink()  # killed between mount and record
    Registry(device.kernel, device.config, clock).reconcile()
    assert RollbackRecord(device.config.rollback_record).highest(APP) == "1.0.0"


def test_reconcile_leaves_other_devices_alone(device: Device, clock: Clock) -> None:
    device.kernel.dm_create("root", "")
    device.kernel.mount_list.append(MountPoint(Path("/"), (253, 0), "erofs", "/dev/mapper/root",
                                               frozenset({"ro"})))
    Registry(device.kernel, device.config, clock).reconcile()
    assert list(device.kernel.dms) == ["root"] and len(device.kernel.mount_list) == 1
