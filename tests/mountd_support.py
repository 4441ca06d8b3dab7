"""weft-mountd host-test support: a fake kernel behind the `Kernel` seam, signed images, a config.

The host has no device-mapper, so `FakeKernel` keeps loop devices, dm devices and mounts in
memory with the kernel's rules that matter to the helper: a loop device lives while our
handle or a dm table holds it (autoclear); a dm name is unique (EBUSY); a mounted dm device
cannot be removed (EBUSY); umount of a non-mount point is EINVAL. Failures are injected per
method (`fail_next`), and `calls` records the order of privileged steps.
"""
from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from package_support import write_package

from weft.daemons.mountd.config import MountdConfig
from weft.daemons.mountd.devmapper import DmInfo, DmTarget
from weft.daemons.mountd.errors import KernelError
from weft.daemons.mountd.kernel import Dev
from weft.daemons.mountd.loopdev import LOOP_MAJOR, LoopDevice
from weft.daemons.mountd.syscalls import APP_MOUNT_OPTIONS, MountPoint
from weft.pack.image import build_image
from weft.pack.keys import generate_keypair, load_signing_key

DM_MAJOR = 253
APP = "com.example.counter"
OTHER_APP = "com.example.notes"


@dataclass
class FakeLoop:
    index: int
    data: bytes
    size_limit: int
    label: str
    handle_open: bool = True


@dataclass
class FakeDm:
    name: str
    uuid: str
    dev: Dev
    inactive: list[DmTarget] | None = None
    active: list[DmTarget] | None = None
    status: str = "V"
    deferred_remove: bool = False


@dataclass
class FakeKernel:
    loops: dict[int, FakeLoop] = field(default_factory=dict)
    dms: dict[str, FakeDm] = field(default_factory=dict)
    mount_list: list[MountPoint] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    fail_next: dict[str, int] = field(default_factory=dict)  # method -> errno raised on its next call
    busy_umounts: dict[Path, int] = field(default_factory=dict)  # target -> EBUSY answers left (-1: always)
    busy_removes: dict[str, int] = field(default_factory=dict)  # dm name -> EBUSY answers left (-1: always)
    read_errno: int = 0  # read_dm fails with this (EIO = dm-verity refused the block)
    status_after_read: str = "V"  # what dm-verity reports once the block was read
    block0: bytes | None = None  # what read_dm returns instead of the loop device's first block
    next_loop: int = 0
    next_minor: int = 0

    def _enter(self, method: str) -> None:
        self.calls.append(method)
        err = self.fail_next.pop(method, 0)
        if err:
            raise KernelError(f"{method} failed: {os.strerror(err)}", err)

    # -- loop ------------------------------------------------------------------------------

    def attach_loop(self, image_fd: int, size_limit: int, label: str) -> LoopDevice:
        self._enter("attach_loop")
        index = self.next_loop
        self.next_loop += 1
        self.loops[index] = FakeLoop(index, os.pread(image_fd, size_limit, 0), size_limit, label)
        return LoopDevice(index=index, fd=10_000 + index)

    def release_loop(self, loop: LoopDevice) -> None:
        self.calls.append("release_loop")
        self.loops[loop.index].handle_open = False
        self._autoclear()

    def _held_loops(self) -> set[int]:
        held = set()
        for dm in self.dms.values():
            for table in (dm.inactive, dm.active):
                for target in table or []:
                    major, minor = target.text.split()[1].split(":")
                    if int(major) == LOOP_MAJOR:
                        held.add(int(minor))
        return held

    def _autoclear(self) -> None:
        held = self._held_loops()
        for index in [i for i, loop in self.loops.items() if not loop.handle_open and i not in held]:
            del self.loops[index]

    # -- device-mapper -----------------------------------------------------------------------

    def dm_create(self, name: str, uuid: str) -> Dev:
        self._enter("dm_create")
        if name in self.dms or any(dm.uuid == uuid for dm in self.dms.values()):  # both unique, as in the kernel
            raise KernelError(f"DM_DEV_CREATE {name} failed: {os.strerror(errno.EBUSY)}", errno.EBUSY)
        dev = (DM_MAJOR, self.next_minor)
        self.next_minor += 1
        self.dms[name] = FakeDm(name, uuid, dev)
        return dev

    def _dm(self, name: str) -> FakeDm:
        if name not in self.dms:
            raise KernelError(f"{name}: {os.strerror(errno.ENXIO)}", errno.ENXIO)
        return self.dms[name]

    def dm_load(self, name: str, targets: list[DmTarget]) -> None:
        self._enter("dm_load")
        dm = self._dm(name)
        for target in targets:
            fields = target.text.split()
            minor = int(fields[1].split(":")[1])
            if minor not in self.loops:
                raise KernelError(f"DM_TABLE_LOAD {name} failed: {os.strerror(errno.ENXIO)}", errno.ENXIO)
        dm.inactive = targets

    def dm_resume(self, name: str) -> None:
        self._enter("dm_resume")
        dm = self._dm(name)
        if dm.inactive is not None:
            dm.active, dm.inactive = dm.inactive, None

    def dm_remove(self, name: str, *, deferred: bool = False) -> None:
        self._enter("dm_remove_deferred" if deferred else "dm_remove")
        dm = self._dm(name)
        mounted = any(m.dev == dm.dev for m in self.mount_list)
        left = self.busy_removes.get(name, 0)
        if mounted or left:
            if left > 0:
                self.busy_removes[name] = left - 1
            if deferred:
                dm.deferred_remove = True  # goes away when its user closes it (tests call finish_deferred)
                return
            raise KernelError(f"DM_DEV_REMOVE {name} failed: {os.strerror(errno.EBUSY)}", errno.EBUSY)
        del self.dms[name]
        self._autoclear()

    def finish_deferred(self) -> None:
        """The last user closed the devices whose removal was deferred."""
        for name in [n for n, dm in self.dms.items() if dm.deferred_remove]:
            del self.dms[name]
        self._autoclear()

    def dm_info(self, name: str) -> DmInfo:
        dm = self._dm(name)
        return DmInfo(name=name, uuid=dm.uuid, dev=os.makedev(*dm.dev), open_count=0,
                      target_count=len(dm.active or []))

    def dm_status(self, name: str) -> list[DmTarget]:
        self.calls.append("dm_status")
        dm = self._dm(name)
        return [DmTarget(t.start, t.length, t.target_type, dm.status) for t in dm.active or []]

    def dm_table(self, name: str) -> list[DmTarget]:
        return list(self._dm(name).active or [])

    def dm_list(self) -> list[tuple[str, Dev]]:
        return [(name, dm.dev) for name, dm in self.dms.items()]

    def read_dm(self, dev: Dev, size: int) -> bytes:
        self._enter("read_dm")
        dm = next(d for d in self.dms.values() if d.dev == dev)
        dm.status = self.status_after_read
        if self.read_errno:
            raise KernelError(f"reading /dev/dm-{dev[1]} failed: {os.strerror(self.read_errno)}", self.read_errno)
        if self.block0 is not None:
            return self.block0[:size]
        minor = int((dm.active or [])[0].text.split()[1].split(":")[1])
        return self.loops[minor].data[:size]

    # -- mounts ------------------------------------------------------------------------------

    def mount_erofs(self, dev: Dev, target: Path) -> None:
        self._enter("mount_erofs")
        if not target.is_dir():
            raise KernelError(f"mount on {target}: {os.strerror(errno.ENOENT)}", errno.ENOENT)
        self.mount_list.append(MountPoint(target=target, dev=dev, fstype="erofs", source=f"/dev/dm-{dev[1]}",
                                          options=APP_MOUNT_OPTIONS | {"relatime"}))

    def umount(self, target: Path, *, detach: bool = False) -> None:
        self._enter("umount_detach" if detach else "umount")
        matches = [i for i, m in enumerate(self.mount_list) if m.target == target]
        if not matches:
            raise KernelError(f"umount {target}: {os.strerror(errno.EINVAL)}", errno.EINVAL)
        left = self.busy_umounts.get(target, 0)
        if left and not detach:
            if left > 0:
                self.busy_umounts[target] = left - 1
            raise KernelError(f"umount {target}: {os.strerror(errno.EBUSY)}", errno.EBUSY)
        del self.mount_list[matches[-1]]

    def mounts(self) -> list[MountPoint]:
        return list(self.mount_list)

    # -- checks ------------------------------------------------------------------------------

    def leftovers(self) -> list[str]:
        """Everything still set up: must be empty after a failed or finished activation."""
        return ([f"loop{i}" for i in self.loops] + [f"dm {n}" for n in self.dms]
                + [f"mount {m.target}" for m in self.mount_list])

    def privileged_calls(self) -> list[str]:
        return [c for c in self.calls if c != "dm_status"]


@dataclass
class Images:
    """Signed `.wapp` images built once per test session (mkfs.erofs is real)."""

    root: Path
    key: Path
    pub: Path
    other_key: Path
    other_pub: Path
    cache: dict[tuple[str, str, bool], Path] = field(default_factory=dict)

    def get(self, app_id: str = APP, version: str = "1.0.0", *, other_key: bool = False) -> Path:
        spec = (app_id, version, other_key)
        if spec not in self.cache:
            package = write_package(self.root / "src" / f"{app_id}-{version}-{other_key}" / app_id,
                                    app_id=app_id, version=version, name="Counter")
            key = load_signing_key(self.other_key if other_key else self.key)
            self.cache[spec] = build_image(package, key, self.root / "built" / f"{app_id}-{version}-{other_key}.wapp",
                                           progress=lambda _message: None)
        return self.cache[spec]


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    root = tmp_path_factory.mktemp("mountd-images")
    key, pub = generate_keypair(root / "keys")
    other_key, other_pub = generate_keypair(root / "other-keys")
    return Images(root=root, key=key, pub=pub, other_key=other_key, other_pub=other_pub)


@dataclass
class Device:
    """A config with every path under tmp_path, and helpers to fill the stores."""

    config: MountdConfig
    kernel: FakeKernel
    images: Images

    def install(self, app_id: str = APP, version: str = "1.0.0", *, source: Path | None = None,
                system: bool = False, other_key: bool = False) -> Path:
        store = self.config.system_images if system else self.config.images
        store.mkdir(parents=True, exist_ok=True)
        target = store / f"{app_id}.wapp"
        data = (source or self.images.get(app_id, version, other_key=other_key)).read_bytes()
        target.unlink(missing_ok=True)
        target.write_bytes(data)
        return target

    def tamper(self, app_id: str, change: Callable[[bytearray], bytes | bytearray], *, system: bool = False) -> Path:
        store = self.config.system_images if system else self.config.images
        path = store / f"{app_id}.wapp"
        path.write_bytes(change(bytearray(path.read_bytes())))
        return path


@pytest.fixture
def device(tmp_path: Path, images: Images) -> Iterator[Device]:
    keys = tmp_path / "trusted-keys"
    keys.mkdir()
    (keys / "publisher.pub").write_bytes(images.pub.read_bytes())
    config = MountdConfig(system_images=tmp_path / "system-images", images=tmp_path / "images", trusted_keys=keys,
                          mount_root=tmp_path / "run" / "apps", rollback_record=tmp_path / "state" / "versions.json",
                          appd_uid=os.getuid(), busy_timeout_s=0.05, busy_poll_s=0.01, adopt_grace_s=30)
    yield Device(config=config, kernel=FakeKernel(), images=images)
