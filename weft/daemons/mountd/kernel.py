"""The privileged seam: every step that needs root goes through one `Kernel` object.

`LinuxKernel` does them with ioctls and syscalls (no program is executed: an exec costs
~70 ms in the TCG test VM). Host tests, which have no device-mapper, pass a fake with the
same methods and check the request handling, ordering and clean-up logic against it.
Devices are (major, minor) pairs; a failed step raises KernelError with the kernel's errno.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Protocol

from weft.daemons.mountd import loopdev, syscalls
from weft.daemons.mountd.devmapper import DeviceMapper, DmInfo, DmTarget
from weft.daemons.mountd.errors import KernelError
from weft.daemons.mountd.loopdev import LoopDevice
from weft.daemons.mountd.syscalls import MountPoint

Dev = tuple[int, int]

__all__ = ["Dev", "DmInfo", "DmTarget", "Kernel", "KernelError", "LinuxKernel", "LoopDevice", "MountPoint"]


class Kernel(Protocol):
    def attach_loop(self, image_fd: int, size_limit: int, label: str) -> LoopDevice:
        """A read-only, autoclearing loop device over the first `size_limit` bytes of the file."""
        ...

    def release_loop(self, loop: LoopDevice) -> None:
        """Drop our handle on the loop device (it detaches once nothing else holds it)."""
        ...

    def dm_create(self, name: str, uuid: str) -> Dev: ...

    def dm_load(self, name: str, targets: list[DmTarget]) -> None:
        """Load a read-only table into the device's inactive slot."""
        ...

    def dm_resume(self, name: str) -> None: ...

    def dm_remove(self, name: str, *, deferred: bool = False) -> None: ...

    def dm_info(self, name: str) -> DmInfo: ...

    def dm_status(self, name: str) -> list[DmTarget]: ...

    def dm_table(self, name: str) -> list[DmTarget]: ...

    def dm_list(self) -> list[tuple[str, Dev]]: ...

    def read_dm(self, dev: Dev, size: int) -> bytes:
        """The first `size` bytes of a device-mapper device (read through its target)."""
        ...

    def mount_erofs(self, dev: Dev, target: Path) -> None:
        """Mount the device's EROFS read-only, nosuid, nodev, noexec."""
        ...

    def umount(self, target: Path, *, detach: bool = False) -> None: ...

    def mounts(self) -> list[MountPoint]: ...


def _dev(encoded: int) -> Dev:
    return (os.major(encoded), os.minor(encoded))


def dm_node(dev: Dev) -> str:
    """devtmpfs names every device-mapper device dm-<minor> as soon as it is created."""
    return f"/dev/dm-{dev[1]}"


class LinuxKernel:
    """The real thing (root, /dev/loop-control, /dev/mapper/control)."""

    def __init__(self) -> None:
        self._dm = DeviceMapper()

    def attach_loop(self, image_fd: int, size_limit: int, label: str) -> LoopDevice:
        return loopdev.attach(image_fd, size_limit, label)

    def release_loop(self, loop: LoopDevice) -> None:
        loopdev.release(loop)

    def dm_create(self, name: str, uuid: str) -> Dev:
        return _dev(self._dm.create(name, uuid))

    def dm_load(self, name: str, targets: list[DmTarget]) -> None:
        self._dm.load_table(name, targets, readonly=True)

    def dm_resume(self, name: str) -> None:
        self._dm.resume(name)

    def dm_remove(self, name: str, *, deferred: bool = False) -> None:
        self._dm.remove(name, deferred=deferred)

    def dm_info(self, name: str) -> DmInfo:
        return self._dm.info(name)

    def dm_status(self, name: str) -> list[DmTarget]:
        return self._dm.status(name)

    def dm_table(self, name: str) -> list[DmTarget]:
        return self._dm.table(name)

    def dm_list(self) -> list[tuple[str, Dev]]:
        return [(name, _dev(dev)) for name, dev in self._dm.list_devices()]

    def read_dm(self, dev: Dev, size: int) -> bytes:
        node = dm_node(dev)
        try:
            fd = os.open(node, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise KernelError(f"cannot open {node}: {exc.strerror}", exc.errno or 0) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISBLK(st.st_mode) or _dev(st.st_rdev) != dev:
                raise KernelError(f"{node} is not device {dev[0]}:{dev[1]}")
            return os.pread(fd, size, 0)
        except OSError as exc:
            raise KernelError(f"reading {node} failed: {exc.strerror}", exc.errno or 0) from None
        finally:
            os.close(fd)

    def mount_erofs(self, dev: Dev, target: Path) -> None:
        syscalls.mount(dm_node(dev), target, "erofs", syscalls.APP_MOUNT_FLAGS)

    def umount(self, target: Path, *, detach: bool = False) -> None:
        syscalls.umount(target, detach=detach)

    def mounts(self) -> list[MountPoint]:
        return syscalls.mount_table()
