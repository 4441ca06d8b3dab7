"""device-mapper through its ioctl interface (linux/dm-ioctl.h): no libdevmapper, no dmsetup exec.

Every command is one `struct dm_ioctl` (312 bytes) followed by its data, on /dev/mapper/control.
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct
import threading
from dataclasses import dataclass
from typing import Any

from weft.daemons.mountd.errors import KernelError

DM_CONTROL = "/dev/mapper/control"
DM_NAME_LEN = 128
DM_UUID_LEN = 129
# version[3], data_size, data_start, target_count, open_count, flags, event_nr, padding, dev, name, uuid, data[7]
_HEADER = struct.Struct(f"<3IIIIiIIIQ{DM_NAME_LEN}s{DM_UUID_LEN}s7s")
# sector_start, length, status, next, target_type[16]
_SPEC = struct.Struct("<QQiI16s")
_NAME_LIST = struct.Struct("<QI")  # dev, next; the NUL-terminated name follows
assert _HEADER.size == 312 and _SPEC.size == 40
VERSION = (4, 0, 0)  # the interface major we speak; the kernel accepts any older minor

DM_LIST_DEVICES, DM_DEV_CREATE, DM_DEV_REMOVE, DM_DEV_SUSPEND, DM_DEV_STATUS = 2, 3, 4, 6, 7
DM_TABLE_LOAD, DM_TABLE_STATUS = 9, 12

DM_READONLY_FLAG = 1 << 0
DM_STATUS_TABLE_FLAG = 1 << 4
DM_BUFFER_FULL_FLAG = 1 << 8
DM_DEFERRED_REMOVE = 1 << 17
# udev rules read these from the DM_COOKIE of a resume/remove uevent (libdevmapper's values).
# The disk and "other" rules probe the new device (blkid, persistent links): a probe holds it
# open, which makes a later remove fail with EBUSY, and nothing needs those links here.
DM_UDEV_DISABLE_SUBSYSTEM_RULES_FLAG = 0x0002
DM_UDEV_DISABLE_DISK_RULES_FLAG = 0x0004
DM_UDEV_DISABLE_OTHER_RULES_FLAG = 0x0008
UDEV_COOKIE = (DM_UDEV_DISABLE_SUBSYSTEM_RULES_FLAG | DM_UDEV_DISABLE_DISK_RULES_FLAG
               | DM_UDEV_DISABLE_OTHER_RULES_FLAG) << 16
_COMMAND_NAMES = {DM_LIST_DEVICES: "DM_LIST_DEVICES", DM_DEV_CREATE: "DM_DEV_CREATE", DM_DEV_REMOVE: "DM_DEV_REMOVE",
                  DM_DEV_SUSPEND: "DM_DEV_SUSPEND", DM_DEV_STATUS: "DM_DEV_STATUS", DM_TABLE_LOAD: "DM_TABLE_LOAD",
                  DM_TABLE_STATUS: "DM_TABLE_STATUS"}
OUT_BUFFER = 16 * 1024
MAX_OUT_BUFFER = 4 * 1024 * 1024


def _request(command: int) -> int:
    """_IOWR(0xfd, command, struct dm_ioctl)."""
    return (3 << 30) | (_HEADER.size << 16) | (0xFD << 8) | command


@dataclass(frozen=True)
class DmInfo:
    name: str
    uuid: str
    dev: int  # encoded dev_t (os.major/os.minor decode it)
    open_count: int
    target_count: int


@dataclass(frozen=True)
class DmTarget:
    start: int  # sectors
    length: int
    target_type: str
    text: str  # the table line's parameters, or the status string


def _cstring(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _align8(size: int) -> int:
    return (size + 7) & ~7


class DeviceMapper:
    """One open /dev/mapper/control; thread-safe (each call builds its own buffer)."""

    def __init__(self, control: str = DM_CONTROL) -> None:
        self._control_path = control
        self._fd = -1
        self._lock = threading.Lock()

    def _control(self) -> int:
        with self._lock:
            if self._fd < 0:
                try:
                    self._fd = os.open(self._control_path, os.O_RDWR | os.O_CLOEXEC)
                except OSError as exc:
                    raise KernelError(f"cannot open {self._control_path}: {exc.strerror}", exc.errno or 0) from None
            return self._fd

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _ioctl(self, command: int, name: str = "", *, flags: int = 0, uuid: str = "", event_nr: int = 0,
               data: bytes = b"", target_count: int = 0, out_size: int = 0) -> tuple[tuple[Any, ...], bytes]:
        """Run one command; returns the header fields and the data area the kernel filled."""
        name_raw, uuid_raw = name.encode(), uuid.encode()
        if len(name_raw) >= DM_NAME_LEN or len(uuid_raw) >= DM_UUID_LEN:
            raise KernelError(f"device-mapper name or uuid too long: {name!r}", errno.EINVAL)
        size = _align8(_HEADER.size + max(len(data), out_size))
        while True:
            buf = bytearray(size)
            _HEADER.pack_into(buf, 0, *VERSION, size, _HEADER.size, target_count, 0, flags, event_nr, 0, 0,
                              name_raw, uuid_raw, b"")
            buf[_HEADER.size:_HEADER.size + len(data)] = data
            try:
                fcntl.ioctl(self._control(), _request(command), buf, True)
            except OSError as exc:
                what = " ".join(filter(None, [_COMMAND_NAMES.get(command, str(command)), name]))
                raise KernelError(f"{what} failed: {exc.strerror}", exc.errno or 0) from None
            header = _HEADER.unpack_from(buf, 0)
            if header[7] & DM_BUFFER_FULL_FLAG and size < MAX_OUT_BUFFER:
                size *= 4
                continue
            data_size, data_start = header[3], header[4]
            return header, bytes(buf[data_start:data_size])

    def create(self, name: str, uuid: str) -> int:
        """A new, empty (suspended) device; returns its encoded dev_t."""
        header, _ = self._ioctl(DM_DEV_CREATE, name, uuid=uuid)
        return int(header[10])

    def load_table(self, name: str, targets: list[DmTarget], *, readonly: bool = True) -> None:
        """Load the inactive table (a verity target must be loaded read-only)."""
        data = bytearray()
        for target in targets:
            params = target.text.encode() + b"\0"
            spec_size = _align8(_SPEC.size + len(params))
            spec = _SPEC.pack(target.start, target.length, 0, spec_size, target.target_type.encode())
            data += spec + params + b"\0" * (spec_size - _SPEC.size - len(params))
        self._ioctl(DM_TABLE_LOAD, name, flags=DM_READONLY_FLAG if readonly else 0, data=bytes(data),
                    target_count=len(targets))

    def resume(self, name: str) -> None:
        """Make the loaded table live (DM_DEV_SUSPEND without the suspend flag)."""
        self._ioctl(DM_DEV_SUSPEND, name, event_nr=UDEV_COOKIE)

    def remove(self, name: str, *, deferred: bool = False) -> None:
        """Remove the device; `deferred`: when its last opener closes it (it may be busy now)."""
        self._ioctl(DM_DEV_REMOVE, name, flags=DM_DEFERRED_REMOVE if deferred else 0, event_nr=UDEV_COOKIE)

    def info(self, name: str) -> DmInfo:
        header, _ = self._ioctl(DM_DEV_STATUS, name)
        return DmInfo(name=_cstring(header[11]), uuid=_cstring(header[12]), dev=int(header[10]),
                      open_count=int(header[6]), target_count=int(header[5]))

    def status(self, name: str) -> list[DmTarget]:
        """The active table's status strings (for verity: "V" or "C" first)."""
        return self._targets(name, 0)

    def table(self, name: str) -> list[DmTarget]:
        """The active table as loaded (target parameters)."""
        return self._targets(name, DM_STATUS_TABLE_FLAG)

    def _targets(self, name: str, flags: int) -> list[DmTarget]:
        header, data = self._ioctl(DM_TABLE_STATUS, name, flags=flags, out_size=OUT_BUFFER)
        targets, offset = [], 0
        for _ in range(int(header[5])):
            if offset + _SPEC.size > len(data):
                break
            start, length, _status, next_offset, target_type = _SPEC.unpack_from(data, offset)
            targets.append(DmTarget(start=start, length=length, target_type=_cstring(target_type),
                                    text=_cstring(data[offset + _SPEC.size:])))
            if next_offset <= offset:
                break
            offset = next_offset  # relative to the start of the data area for status replies
        return targets

    def list_devices(self) -> list[tuple[str, int]]:
        """(name, encoded dev_t) of every device-mapper device."""
        _, data = self._ioctl(DM_LIST_DEVICES, out_size=OUT_BUFFER)
        devices, offset = [], 0
        while offset + _NAME_LIST.size <= len(data):
            dev, next_offset = _NAME_LIST.unpack_from(data, offset)
            if dev == 0:
                break  # the kernel's "no devices" entry
            devices.append((_cstring(data[offset + _NAME_LIST.size:]), dev))
            if next_offset == 0:
                break
            offset += next_offset  # relative to this entry
        return devices
