"""Loop devices through the kernel interface (linux/loop.h): LOOP_CTL_GET_FREE + LOOP_CONFIGURE.

One ioctl configures a free loop device over an already open file: read-only, with
autoclear (the device detaches itself when its last opener closes it, so a helper killed
half-way leaves no loop device behind), and sized to an exact byte limit.
"""
from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass

from weft.daemons.mountd.errors import KernelError

LOOP_CONTROL = "/dev/loop-control"
LOOP_MAJOR = 7
LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_NAME_SIZE = 64
# struct loop_info64: device, inode, rdevice, offset, sizelimit, number, encrypt_type,
# encrypt_key_size, flags, file_name[64], crypt_name[64], encrypt_key[32], init[2]
_INFO64 = struct.Struct("<5Q4I64s64s32s2Q")
# struct loop_config: fd, block_size, info, __reserved[8]
_CONFIG = struct.Struct(f"<II{_INFO64.size}s64x")
assert _INFO64.size == 232 and _CONFIG.size == 304
# Another process may take the device LOOP_CTL_GET_FREE named before we configure it.
MAX_ATTEMPTS = 16


@dataclass
class LoopDevice:
    """A configured loop device and our open handle on it (closing the handle lets it autoclear)."""

    index: int
    fd: int

    @property
    def path(self) -> str:
        return f"/dev/loop{self.index}"

    @property
    def dev(self) -> tuple[int, int]:
        return (LOOP_MAJOR, self.index)


def attach(image_fd: int, size_limit: int, label: str) -> LoopDevice:
    """A read-only, autoclearing loop device over the first `size_limit` bytes of `image_fd`."""
    info = _INFO64.pack(0, 0, 0, 0, size_limit, 0, 0, 0, LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
                        label.encode()[:LO_NAME_SIZE - 1], b"", b"", 0, 0)
    config = _CONFIG.pack(image_fd, 0, info)
    try:
        control = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise KernelError(f"cannot open {LOOP_CONTROL}: {exc.strerror}", exc.errno or 0) from None
    try:
        for _ in range(MAX_ATTEMPTS):
            try:
                index = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                fd = os.open(f"/dev/loop{index}", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise KernelError(f"no free loop device: {exc.strerror}", exc.errno or 0) from None
            try:
                fcntl.ioctl(fd, LOOP_CONFIGURE, config)
            except OSError as exc:
                os.close(fd)
                if exc.errno == errno.EBUSY:
                    continue  # taken meanwhile: ask for another
                raise KernelError(f"LOOP_CONFIGURE on /dev/loop{index} failed: {exc.strerror}",
                                  exc.errno or 0) from None
            return LoopDevice(index=index, fd=fd)
        raise KernelError(f"no free loop device after {MAX_ATTEMPTS} attempts", errno.EBUSY)
    finally:
        os.close(control)


def release(loop: LoopDevice) -> None:
    """Drop our handle; the device detaches once nothing (e.g. a dm table) holds it open."""
    if loop.fd >= 0:
        os.close(loop.fd)
        loop.fd = -1
