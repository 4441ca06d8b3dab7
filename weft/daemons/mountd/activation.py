"""Activate one app image, and tear it down again.

Order (docs/mountd.md): open the store's file once and use that descriptor throughout;
footer → Ed25519 signature by a trusted key → app id → rollback record → verity superblock
bytes, all before anything privileged; then loop device → dm-verity device (name
`weft-app-<id>`) → its verity status and a read of the EROFS superblock through it → mount
at <mount_root>/<id> → raise the rollback record. A failure at any step undoes the steps
before it, so nothing is left behind; a helper killed half-way is cleaned up by the
reconcile at its next start (registry.py), and its loop device detaches by itself.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import stat
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from nacl.signing import VerifyKey

from weft.daemons.mountd.config import MountdConfig
from weft.daemons.mountd.errors import KernelError, MountdError
from weft.daemons.mountd.kernel import Dev, DmTarget, Kernel
from weft.daemons.protocol import MountReason
from weft.errors import WeftError
from weft.manifest import VERSION_RE
from weft.pack.footer import (
    Footer,
    FooterError,
    FooterSignatureError,
    SignedFooter,
    load_trusted_keys,
    read_footer_fd,
    verify_footer_signature,
)
from weft.pack.keys import key_id
from weft.rollback import RollbackError, RollbackRecord, RollbackRecordError, VersionOrderError
from weft.store import PUBLISHER_HEX_CHARS, image_file, publisher_from_key_id
from weft.verity import compute_layout, encode_superblock

log = logging.getLogger("weft.mountd")

DM_PREFIX = "weft-app-"
UUID_PREFIX = "WEFT-APP-"
DM_NAME_MAX = 127  # DM_NAME_LEN without its NUL
SECTOR_SIZE = 512
EROFS_SUPERBLOCK_OFFSET = 1024
EROFS_MAGIC = 0xE0F5E1E2
VERITY_OK, VERITY_CORRUPTED = "V", "C"
T = TypeVar("T")


@dataclass(frozen=True)
class ActiveMount:
    """One verified image, mounted."""

    app_id: str
    version: str
    root_hash: str
    publisher: str  # fingerprint of the trusted key that verified it (weft.store.publisher_from_key_id)
    mount_path: Path
    dm_name: str
    dm_dev: Dev
    loop: str  # /dev/loopN under the dm device
    system: bool  # from the system store (its rollback is the OS's business, not the record's)


def dm_name(app_id: str) -> str:
    return DM_PREFIX + app_id


def dm_uuid(app_id: str, root_hash: str, publisher: str, version: str) -> str:
    """Names the image on the device itself, so a restarted helper can say what is mounted and
    who signed it. Device-mapper uuids are unique like names, so the app id is part of the key:
    two apps whose footers name the same root hash must not block each other."""
    return f"{UUID_PREFIX}{_uuid_key(app_id, root_hash)}-{publisher}-{version}"


def parse_dm_uuid(uuid: str, app_id: str, root_hash: str) -> tuple[str, str] | None:
    """(publisher, version) from a uuid `dm_uuid` made for this app and root hash, else None."""
    prefix = f"{UUID_PREFIX}{_uuid_key(app_id, root_hash)}-"
    if not uuid.startswith(prefix):
        return None
    publisher, _, version = uuid[len(prefix):].partition("-")
    if not re.fullmatch(f"[0-9a-f]{{{PUBLISHER_HEX_CHARS}}}", publisher) or not VERSION_RE.fullmatch(version):
        return None
    return publisher, version


def _uuid_key(app_id: str, root_hash: str) -> str:
    return hashlib.sha256(f"{app_id}\n{root_hash}".encode()).hexdigest()[:16]


def check_app_id_fits(app_id: str) -> None:
    if len(dm_name(app_id)) > DM_NAME_MAX:
        raise MountdError(MountReason.BAD_REQUEST, f"app id '{app_id}' is too long for a device name "
                                                   f"(at most {DM_NAME_MAX - len(DM_PREFIX)} characters)")


def verity_target(footer: Footer, loop_dev: Dev) -> DmTarget:
    """`1 <data dev> <hash dev> 4096 4096 <data blocks> <hash start block> sha256 <root> <salt>`:
    both devices are the one loop device; the tree starts one block after the hash offset,
    past the superblock, which the kernel does not read."""
    v = footer.verity
    tree_start = compute_layout(v.params(), v.data_blocks, v.hash_offset).tree_offset
    device = f"{loop_dev[0]}:{loop_dev[1]}"
    params = (f"{v.hash_type} {device} {device} {v.data_block_size} {v.hash_block_size} {v.data_blocks} "
              f"{tree_start // v.hash_block_size} {v.hash_algorithm} {v.root_hash} {v.salt}")
    return DmTarget(start=0, length=v.data_blocks * (v.data_block_size // SECTOR_SIZE), target_type="verity",
                    text=params)


# ---- checks before anything privileged -------------------------------------------------------

@dataclass(frozen=True)
class OpenImage:
    fd: int
    path: Path
    system: bool


def open_image(config: MountdConfig, app_id: str) -> OpenImage:
    """The store's image for `app_id`, opened once: everything after this uses the descriptor.
    The system store wins; a bad file there is an error, never a reason to try the other store."""
    for store, system in ((config.system_images, True), (config.images, False)):
        path = image_file(store, app_id)
        try:  # O_NONBLOCK: a FIFO planted in the store must not hang the helper
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise MountdError(MountReason.BAD_IMAGE, f"{path} is a symbolic link, not an image") from None
            raise MountdError(MountReason.MOUNT_FAILED, f"cannot open {path}: {exc.strerror}") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            what = "a directory (a package directory is not an image)" if stat.S_ISDIR(mode) else "not a regular file"
            raise MountdError(MountReason.BAD_IMAGE, f"{path} is {what}")
        return OpenImage(fd=fd, path=path, system=system)
    raise MountdError(MountReason.NOT_INSTALLED, f"{app_id} is not installed (no {path.name} in "
                                                 f"{config.system_images} or {config.images})")


def trusted_keys(config: MountdConfig) -> list[VerifyKey]:
    try:
        return load_trusted_keys(config.trusted_keys)
    except WeftError as exc:
        raise MountdError(MountReason.MOUNT_FAILED, f"the trusted keys are unusable: {exc}") from None


def check_image(image: OpenImage, app_id: str, keys: list[VerifyKey], rollback: RollbackRecord) -> SignedFooter:
    """Footer, signature, id, rollback and the unauthenticated bytes of the hash area."""
    try:
        signed = read_footer_fd(image.fd, str(image.path))
    except FooterError as exc:
        raise MountdError(MountReason.BAD_IMAGE, f"{image.path}: {exc}") from None
    footer = signed.footer
    known = [key for key in keys if key_id(key) == footer.key_id]
    if not known:
        raise MountdError(MountReason.UNKNOWN_KEY, f"{image.path} is signed by key {footer.key_id[:16]}…, which is "
                                                   f"not among the trusted keys")
    try:
        verify_footer_signature(signed, known)
    except FooterSignatureError as exc:
        raise MountdError(MountReason.BAD_SIGNATURE, f"{image.path}: {exc}") from None
    if footer.app_id != app_id:
        raise MountdError(MountReason.ID_MISMATCH, f"{image.path} holds {footer.app_id} {footer.version}, "
                                                   f"not {app_id}")
    if not image.system:
        try:
            rollback.check(app_id, footer.version)
        except (RollbackError, VersionOrderError) as exc:
            raise MountdError(MountReason.ROLLBACK, f"{image.path}: {exc}") from None
        except RollbackRecordError as exc:
            raise MountdError(MountReason.MOUNT_FAILED, str(exc)) from None
    _check_hash_area_header(image, footer)
    return signed


def _check_hash_area_header(image: OpenImage, footer: Footer) -> None:
    """The kernel never reads the verity superblock block; check it equals what the footer implies."""
    v = footer.verity
    expected = encode_superblock(v.params(), v.data_blocks).ljust(v.hash_block_size, b"\0")
    try:
        actual = os.pread(image.fd, len(expected), v.hash_offset)
    except OSError as exc:
        raise MountdError(MountReason.BAD_IMAGE, f"cannot read {image.path}: {exc.strerror}") from None
    if actual != expected:
        raise MountdError(MountReason.CORRUPTED, f"{image.path}: the verity superblock does not match the "
                                                 f"signed footer (tampered hash area)")


# ---- set-up and tear-down ------------------------------------------------------------------

@contextlib.contextmanager
def _undo_on_failure() -> Iterator[Callable[[Callable[[], object], str], None]]:
    """Collects undo steps; on an exception runs them newest first (each one best-effort,
    logged), on success forgets them."""
    steps: list[tuple[Callable[[], object], str]] = []

    def push(step: Callable[[], object], what: str) -> None:
        steps.append((step, what))

    try:
        yield push
    except BaseException:
        for step, what in reversed(steps):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - keep undoing the rest; reconcile catches what is left
                log.error("clean-up step '%s' failed: %s", what, exc)
        raise


def activate(kernel: Kernel, config: MountdConfig, app_id: str) -> ActiveMount:
    check_app_id_fits(app_id)
    rollback = RollbackRecord(config.rollback_record)
    image = open_image(config, app_id)
    try:
        signed = check_image(image, app_id, trusted_keys(config), rollback)
        active = _set_up(kernel, config, image, signed.footer)
    finally:
        os.close(image.fd)
    if not image.system:
        try:
            rollback.record(app_id, active.version)
        except WeftError as exc:  # unrecorded, a later older image would pass: fail closed
            deactivate(kernel, config, active)
            raise MountdError(MountReason.MOUNT_FAILED, f"cannot record the activated version: {exc}") from None
    return active


def _set_up(kernel: Kernel, config: MountdConfig, image: OpenImage, footer: Footer) -> ActiveMount:
    v = footer.verity
    name = dm_name(footer.app_id)
    mount_path = config.mount_root / footer.app_id
    publisher = publisher_from_key_id(footer.key_id)
    with _undo_on_failure() as undo:
        loop = _step(lambda: kernel.attach_loop(image.fd, v.hash_offset + v.hash_size, f"weft-app:{footer.app_id}"))
        try:
            uuid = dm_uuid(footer.app_id, v.root_hash, publisher, footer.version)
            dev = _step(lambda: kernel.dm_create(name, uuid),
                        busy=f"a device for {footer.app_id} still exists (a previous mount is being torn down)")
            undo(lambda: _remove_dm(kernel, config, name), f"remove {name}")
            _step(lambda: kernel.dm_load(name, [verity_target(footer, loop.dev)]))
        finally:
            kernel.release_loop(loop)  # from here the dm table holds the loop device
        _step(lambda: kernel.dm_resume(name))
        _check_verity(kernel, name, dev, image.path)
        _make_mountpoint(config.mount_root, mount_path)
        undo(lambda: _remove_mountpoint(mount_path), f"rmdir {mount_path}")
        _step(lambda: kernel.mount_erofs(dev, mount_path))
        undo(lambda: _unmount(kernel, config, mount_path, force=True), f"umount {mount_path}")
        # The read above may have raced a corruption report: look once more now it is mounted.
        if verity_state(kernel, name) != VERITY_OK:
            raise MountdError(MountReason.CORRUPTED, f"{image.path}: dm-verity reports corruption")
        return ActiveMount(app_id=footer.app_id, version=footer.version, root_hash=v.root_hash, publisher=publisher,
                           mount_path=mount_path, dm_name=name, dm_dev=dev, loop=loop.path, system=image.system)


def _step(action: Callable[[], T], *, busy: str | None = None) -> T:
    try:
        return action()
    except KernelError as exc:
        if busy is not None and exc.errno in (errno.EBUSY, errno.EEXIST):
            raise MountdError(MountReason.MOUNT_FAILED, busy) from None
        raise MountdError(MountReason.MOUNT_FAILED, str(exc)) from None


def verity_state(kernel: Kernel, name: str) -> str:
    targets = _step(lambda: kernel.dm_status(name))
    if len(targets) != 1 or targets[0].target_type != "verity":
        raise MountdError(MountReason.MOUNT_FAILED, f"{name} is not a single verity target")
    return targets[0].text.split(" ", 1)[0]


def _check_verity(kernel: Kernel, name: str, dev: Dev, path: Path) -> None:
    """A successful table load proves nothing about the data: read through the device (which
    checks block 0 up to the root hash) and ask dm-verity whether it saw a bad block."""
    try:
        head = kernel.read_dm(dev, 4096)
    except KernelError as exc:
        if exc.errno == errno.EIO:
            raise MountdError(MountReason.CORRUPTED, f"{path}: dm-verity refused the first block "
                                                     f"(data or hash tree do not match the signed root hash)") from None
        raise MountdError(MountReason.MOUNT_FAILED, str(exc)) from None
    state = verity_state(kernel, name)
    if state != VERITY_OK:
        raise MountdError(MountReason.CORRUPTED, f"{path}: dm-verity reports corruption (status {state!r})")
    if len(head) < EROFS_SUPERBLOCK_OFFSET + 4 or struct.unpack_from(
            "<I", head, EROFS_SUPERBLOCK_OFFSET)[0] != EROFS_MAGIC:
        raise MountdError(MountReason.BAD_IMAGE, f"{path}: the verified data is not an EROFS file system")


def _make_mountpoint(root: Path, path: Path) -> None:
    try:
        root.mkdir(mode=0o755, parents=True, exist_ok=True)
        os.chmod(root, 0o755)  # whatever the umask: appd's user must reach the files
        path.mkdir(mode=0o755)
        os.chmod(path, 0o755)
    except FileExistsError:
        # Left by a helper that died before its rmdir: reusable only as an empty, unmounted directory.
        if path.is_symlink() or not path.is_dir() or os.path.ismount(path) or any(path.iterdir()):
            raise MountdError(MountReason.MOUNT_FAILED, f"{path} is in the way") from None
    except OSError as exc:
        raise MountdError(MountReason.MOUNT_FAILED, f"cannot create {path}: {exc.strerror}") from None


def _remove_mountpoint(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.rmdir()


def _retry_busy(config: MountdConfig, action: Callable[[], None]) -> bool:
    """Run `action` until it is not EBUSY or the busy timeout passes; False if still busy."""
    deadline = time.monotonic() + config.busy_timeout_s
    while True:
        try:
            action()
            return True
        except KernelError as exc:
            if exc.errno != errno.EBUSY:
                raise
            if time.monotonic() >= deadline:
                return False
            time.sleep(config.busy_poll_s)


def _unmount(kernel: Kernel, config: MountdConfig, path: Path, *, force: bool) -> bool:
    """Unmount; if still busy after the wait: detach lazily (`force`) or give up (False)."""
    try:
        if _retry_busy(config, lambda: kernel.umount(path)):
            return True
        if not force:
            return False
        log.warning("%s is still in use: detaching it lazily", path)
        kernel.umount(path, detach=True)
        return True
    except KernelError as exc:
        if exc.errno == errno.EINVAL:  # not a mount point (any more)
            return True
        raise


def _remove_dm(kernel: Kernel, config: MountdConfig, name: str) -> None:
    """Remove the device (which lets its loop device autoclear); deferred if it stays busy."""
    try:
        if not _retry_busy(config, lambda: kernel.dm_remove(name)):
            log.warning("%s is still open: removing it when its last user closes it", name)
            kernel.dm_remove(name, deferred=True)
    except KernelError as exc:
        if exc.errno != errno.ENXIO:  # already gone
            raise


def deactivate(kernel: Kernel, config: MountdConfig, active: ActiveMount, *, force: bool = True) -> bool:
    """Unmount, remove the mount point and the dm device. Without `force` a mount that is still
    in use is left as it is and False returned."""
    return teardown(kernel, config, active.mount_path, active.dm_name, force=force)


def teardown(kernel: Kernel, config: MountdConfig, mount_path: Path | None, name: str | None, *,
             force: bool = True) -> bool:
    """What deactivate does, for pieces found without a record (reconcile)."""
    try:
        if mount_path is not None:
            if not _unmount(kernel, config, mount_path, force=force):
                return False
            _remove_mountpoint(mount_path)
        if name is not None:
            _remove_dm(kernel, config, name)
    except (KernelError, OSError) as exc:
        raise MountdError(MountReason.MOUNT_FAILED, f"tear-down of {name or mount_path} failed: {exc}") from None
    return True
