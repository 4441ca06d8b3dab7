"""weft-mountd activation against a fake kernel: every check before anything privileged, the
exact dm-verity table, the order of the privileged steps, and clean-up on every failure path."""
from __future__ import annotations

import errno
import json
import os
import struct

import pytest
from mountd_support import APP, OTHER_APP, Device

from weft.daemons.mountd.activation import (
    ActiveMount,
    activate,
    deactivate,
    dm_name,
    dm_uuid,
    parse_dm_uuid,
)
from weft.daemons.mountd.errors import MountdError
from weft.daemons.protocol import MountReason
from weft.pack.footer import TRAILER, read_footer, seal_footer
from weft.pack.keys import key_id, load_signing_key, load_verify_key
from weft.rollback import RollbackRecord, RollbackRecordError
from weft.store import publisher_from_key_id

SETUP_ORDER = ["attach_loop", "dm_create", "dm_load", "release_loop", "dm_resume", "read_dm", "mount_erofs"]


def _refused(device: Device, reason: MountReason, app_id: str = APP) -> str:
    with pytest.raises(MountdError) as info:
        activate(device.kernel, device.config, app_id)
    assert info.value.reason == reason, str(info.value)
    assert device.kernel.leftovers() == []
    assert not (device.config.mount_root / app_id).exists()
    return str(info.value)


def test_activation_sets_up_verity_over_the_image_and_mounts_it(device: Device) -> None:
    path = device.install()
    footer = read_footer(path).footer
    v = footer.verity
    old_umask = os.umask(0o077)  # the unit's umask must not make the mount point private
    try:
        active = activate(device.kernel, device.config, APP)
    finally:
        os.umask(old_umask)
    kernel = device.kernel
    assert kernel.privileged_calls() == SETUP_ORDER
    assert active == ActiveMount(app_id=APP, version="1.0.0", root_hash=v.root_hash,
                                 publisher=publisher_from_key_id(footer.key_id),
                                 mount_path=device.config.mount_root / APP, dm_name=f"weft-app-{APP}",
                                 dm_dev=(253, 0), loop="/dev/loop0", system=False)
    # The loop device ends where the footer begins (sized on purpose, not by the file).
    assert kernel.loops[0].size_limit == v.hash_offset + v.hash_size == footer.footer_offset
    assert kernel.loops[0].handle_open is False  # held by the dm table only: autoclear on remove
    (target,) = kernel.dms[dm_name(APP)].active or []
    assert (target.start, target.length, target.target_type) == (0, v.data_blocks * 8, "verity")
    hash_start = (v.hash_offset + 4096) // 4096  # past the superblock block
    assert target.text == (f"1 7:0 7:0 4096 4096 {v.data_blocks} {hash_start} sha256 {v.root_hash} {v.salt}")
    publisher = publisher_from_key_id(footer.key_id)
    assert active.publisher == publisher == publisher_from_key_id(key_id(load_verify_key(device.images.pub)))
    assert kernel.dms[dm_name(APP)].uuid == dm_uuid(APP, v.root_hash, publisher, "1.0.0")
    (point,) = kernel.mount_list
    assert point.target == device.config.mount_root / APP and point.dev == (253, 0)
    for directory in (device.config.mount_root, device.config.mount_root / APP):
        assert oct(directory.stat().st_mode & 0o777) == "0o755"
    assert RollbackRecord(device.config.rollback_record).highest(APP) == "1.0.0"


def test_deactivation_leaves_nothing(device: Device) -> None:
    device.install()
    active = activate(device.kernel, device.config, APP)
    assert deactivate(device.kernel, device.config, active)
    assert device.kernel.leftovers() == []
    assert not active.mount_path.exists()


def test_uuid_carries_publisher_and_version_for_a_restarted_helper() -> None:
    root, publisher = "ab" * 32, "0123456789abcdef" * 2
    assert parse_dm_uuid(dm_uuid(APP, root, publisher, "1.2-rc.1"), APP, root) == (publisher, "1.2-rc.1")
    assert parse_dm_uuid(dm_uuid(APP, root, publisher, "1.2"), APP, "cd" * 32) is None
    assert parse_dm_uuid(dm_uuid(APP, root, publisher, "1.2"), OTHER_APP, root) is None
    assert parse_dm_uuid(dm_uuid(APP, root, "nope", "1.2"), APP, root) is None
    assert dm_uuid(APP, root, publisher, "1") != dm_uuid(OTHER_APP, root, publisher, "1")
    assert len(dm_uuid(APP, root, publisher, "9" * 64)) < 129  # DM_UUID_LEN


# ---- refused before anything privileged ---------------------------------------------------------

def test_not_installed(device: Device) -> None:
    assert "not installed" in _refused(device, MountReason.NOT_INSTALLED)
    assert device.kernel.calls == []


def test_garbage_file(device: Device) -> None:
    device.config.images.mkdir(parents=True)
    (device.config.images / f"{APP}.wapp").write_bytes(os.urandom(50_000))
    _refused(device, MountReason.BAD_IMAGE)
    assert device.kernel.calls == []


def test_truncated_image(device: Device) -> None:
    device.install()
    device.tamper(APP, lambda raw: raw[:-100])
    _refused(device, MountReason.BAD_IMAGE)


def test_appended_bytes(device: Device) -> None:
    device.install()
    device.tamper(APP, lambda raw: raw + b"\0" * 4096)
    _refused(device, MountReason.BAD_IMAGE)


def test_truncated_inside_the_data(device: Device) -> None:
    """Cut the data but keep the tail: the footer no longer sits where it says."""
    path = device.install()
    footer_offset = read_footer(path).footer.footer_offset
    device.tamper(APP, lambda raw: raw[:4096] + raw[footer_offset:])
    _refused(device, MountReason.BAD_IMAGE)


def test_untrusted_key(device: Device) -> None:
    device.install(other_key=True)
    assert "not among the trusted keys" in _refused(device, MountReason.UNKNOWN_KEY)
    assert device.kernel.calls == []


def test_flipped_signature_byte(device: Device) -> None:
    device.install()

    def flip(raw: bytearray) -> bytearray:
        raw[-TRAILER.size - 1] ^= 0x01  # last signature byte
        return raw

    device.tamper(APP, flip)
    _refused(device, MountReason.BAD_SIGNATURE)
    assert device.kernel.calls == []


def test_footer_offsets_moved_without_the_key(device: Device) -> None:
    """Point the hash area elsewhere (same length JSON): the signature no longer matches."""
    path = device.install()
    signed = read_footer(path)
    body = json.loads(signed.body)
    body["verity"]["root_hash"] = "0" * 64
    new = json.dumps(body, separators=(",", ":")).encode()
    assert len(new) == len(signed.body)
    device.tamper(APP, lambda raw: raw.replace(signed.body, new))
    _refused(device, MountReason.BAD_SIGNATURE)


def test_another_apps_image_renamed(device: Device) -> None:
    device.install(APP, source=device.images.get(OTHER_APP))
    assert f"holds {OTHER_APP}" in _refused(device, MountReason.ID_MISMATCH)
    assert device.kernel.calls == []


def test_older_version_than_recorded_is_refused(device: Device) -> None:
    RollbackRecord(device.config.rollback_record).record(APP, "2.0.0")
    device.install(version="1.0.0")
    assert "older than version 2.0.0" in _refused(device, MountReason.ROLLBACK)
    assert device.kernel.calls == []


def test_newer_version_raises_the_record(device: Device) -> None:
    record = RollbackRecord(device.config.rollback_record)
    record.record(APP, "1.0.0")
    device.install(version="1.1.0")
    activate(device.kernel, device.config, APP)
    assert record.highest(APP) == "1.1.0"


def test_unreadable_rollback_record_fails_closed(device: Device) -> None:
    device.config.rollback_record.parent.mkdir(parents=True)
    device.config.rollback_record.write_text("{not json")
    device.install()
    _refused(device, MountReason.MOUNT_FAILED)


def test_symlink_in_the_store(device: Device) -> None:
    elsewhere = device.images.get()
    device.config.images.mkdir(parents=True)
    (device.config.images / f"{APP}.wapp").symlink_to(elsewhere)
    assert "symbolic link" in _refused(device, MountReason.BAD_IMAGE)


def test_directory_package_planted_in_the_store(device: Device) -> None:
    (device.config.images / f"{APP}.wapp").mkdir(parents=True)
    (device.config.images / f"{APP}.wapp" / "wapp.toml").write_text("")
    assert "directory" in _refused(device, MountReason.BAD_IMAGE)


def test_fifo_in_the_store_does_not_hang(device: Device) -> None:
    device.config.images.mkdir(parents=True)
    os.mkfifo(device.config.images / f"{APP}.wapp")
    assert "not a regular file" in _refused(device, MountReason.BAD_IMAGE)


def test_tampered_verity_superblock(device: Device) -> None:
    """The kernel never reads the superblock block; the helper compares it with the footer."""
    path = device.install()
    hash_offset = read_footer(path).footer.verity.hash_offset

    def flip(raw: bytearray) -> bytearray:
        raw[hash_offset + 100] ^= 0x01  # inside the salt field
        return raw

    device.tamper(APP, flip)
    _refused(device, MountReason.CORRUPTED)
    assert device.kernel.calls == []


def test_app_id_too_long_for_a_device_name(device: Device) -> None:
    long_id = "com.example." + "a" * 120
    assert "too long" in _refused(device, MountReason.BAD_REQUEST, long_id)


def test_broken_trusted_key_directory(device: Device) -> None:
    (device.config.trusted_keys / "broken.pub").write_text("not a key")
    device.install()
    _refused(device, MountReason.MOUNT_FAILED)


# ---- the system store ------------------------------------------------------------------------------

def test_system_store_wins_and_is_exempt_from_the_record(device: Device) -> None:
    RollbackRecord(device.config.rollback_record).record(APP, "5.0.0")
    device.install(version="1.0.0", system=True)
    device.install(version="9.0.0")  # an installed copy never shadows a system app
    active = activate(device.kernel, device.config, APP)
    assert (active.version, active.system) == ("1.0.0", True)
    assert RollbackRecord(device.config.rollback_record).highest(APP) == "5.0.0"


def test_bad_system_image_is_not_replaced_by_the_installed_one(device: Device) -> None:
    device.install(system=True)
    device.tamper(APP, lambda raw: raw[:-1], system=True)
    device.install()
    _refused(device, MountReason.BAD_IMAGE)


# ---- after activation: a successful open is not proof --------------------------------------------

def test_eio_reading_through_verity_is_corruption(device: Device) -> None:
    device.install()
    device.kernel.read_errno = errno.EIO
    assert "dm-verity refused" in _refused(device, MountReason.CORRUPTED)


def test_corruption_status_after_the_read_is_refused(device: Device) -> None:
    device.install()
    device.kernel.status_after_read = "C"
    _refused(device, MountReason.CORRUPTED)


def test_verified_data_that_is_not_erofs(device: Device) -> None:
    device.install()
    device.kernel.block0 = bytes(4096)
    assert "not an EROFS" in _refused(device, MountReason.BAD_IMAGE)


def test_signed_footer_with_another_mounted_apps_root_hash(device: Device) -> None:
    """A trusted publisher's footer naming the root hash of another app that is mounted: the
    device uuid must not collide (that would block the activation with a misleading error);
    the read through dm-verity refuses it."""
    device.install(OTHER_APP)
    activate(device.kernel, device.config, OTHER_APP)
    good = device.images.get()
    signed, other = read_footer(good), read_footer(device.images.get(OTHER_APP)).footer
    forged = signed.footer.model_copy(update={"verity": signed.footer.verity.model_copy(
        update={"root_hash": other.verity.root_hash})})
    key = load_signing_key(device.images.key)
    device.install(source=good)
    device.tamper(APP, lambda raw: raw[:signed.footer.footer_offset] + seal_footer(forged, key))
    device.kernel.read_errno = errno.EIO  # what dm-verity answers: block 0 does not hash to that root
    with pytest.raises(MountdError) as info:
        activate(device.kernel, device.config, APP)
    assert info.value.reason == MountReason.CORRUPTED, str(info.value)
    assert list(device.kernel.dms) == [dm_name(OTHER_APP)]


# ---- every privileged step failing cleans up ----------------------------------------------------

@pytest.mark.parametrize("step", ["attach_loop", "dm_create", "dm_load", "dm_resume", "read_dm", "mount_erofs"])
def test_failure_at_each_step_leaves_nothing(device: Device, step: str) -> None:
    device.install()
    device.kernel.fail_next[step] = errno.EIO if step == "read_dm" else errno.EINVAL
    _refused(device, MountReason.CORRUPTED if step == "read_dm" else MountReason.MOUNT_FAILED)
    calls = device.kernel.privileged_calls()
    assert calls[:calls.index(step) + 1] == SETUP_ORDER[:SETUP_ORDER.index(step) + 1]
    if step != "attach_loop":
        assert "release_loop" in calls


def test_recording_failure_undoes_the_mount(device: Device, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unrecorded, a later older image would pass the rollback check: fail closed."""
    def broken(self: RollbackRecord, app_id: str, version: str) -> None:
        raise RollbackRecordError("disk full")

    monkeypatch.setattr(RollbackRecord, "record", broken)
    device.install()
    assert "disk full" in _refused(device, MountReason.MOUNT_FAILED)
    assert "mount_erofs" in device.kernel.calls


def test_existing_device_name_is_refused_without_touching_it(device: Device) -> None:
    device.install()
    device.kernel.dm_create(dm_name(APP), "someone-else")
    with pytest.raises(MountdError) as info:
        activate(device.kernel, device.config, APP)
    assert info.value.reason == MountReason.MOUNT_FAILED and "still exists" in str(info.value)
    assert list(device.kernel.dms) == [dm_name(APP)] and device.kernel.loops == {}


def test_a_stale_empty_mountpoint_is_reused_but_not_a_file(device: Device) -> None:
    device.install()
    (device.config.mount_root / APP).mkdir(parents=True)
    activate(device.kernel, device.config, APP)
    device.kernel.mount_list.clear()
    device.kernel.dms.clear()
    device.kernel.loops.clear()
    (device.config.mount_root / APP).rmdir()
    (device.config.mount_root / APP).write_text("in the way")
    with pytest.raises(MountdError) as info:
        activate(device.kernel, device.config, APP)
    assert "in the way" in str(info.value)
    assert device.kernel.leftovers() == []


def test_busy_unmount_detaches_lazily_and_defers_the_device(device: Device) -> None:
    device.install()
    active = activate(device.kernel, device.config, APP)
    device.kernel.busy_umounts[active.mount_path] = -1
    assert deactivate(device.kernel, device.config, active, force=True)
    assert "umount_detach" in device.kernel.calls and device.kernel.mount_list == []
    assert not active.mount_path.exists()
    assert device.kernel.leftovers() == []


def test_busy_device_remove_is_retried_then_deferred(device: Device) -> None:
    device.install()
    active = activate(device.kernel, device.config, APP)
    device.kernel.busy_removes[active.dm_name] = 2  # udev probing for a moment
    deactivate(device.kernel, device.config, active)
    assert device.kernel.calls.count("dm_remove") == 3 and device.kernel.leftovers() == []
    active = activate(device.kernel, device.config, APP)
    device.kernel.busy_removes[active.dm_name] = -1
    deactivate(device.kernel, device.config, active)
    assert "dm_remove_deferred" in device.kernel.calls
    device.kernel.finish_deferred()
    assert device.kernel.leftovers() == []


def test_unforced_teardown_leaves_a_busy_mount_alone(device: Device) -> None:
    device.install()
    active = activate(device.kernel, device.config, APP)
    device.kernel.busy_umounts[active.mount_path] = -1
    assert deactivate(device.kernel, device.config, active, force=False) is False
    assert len(device.kernel.mount_list) == 1 and active.mount_path.is_dir()


def test_erofs_magic_is_where_the_helper_looks(device: Device) -> None:
    """The read check looks at the real EROFS superblock of a built image."""
    raw = device.images.get().read_bytes()
    assert struct.unpack_from("<I", raw, 1024)[0] == 0xE0F5E1E2
