"""mount(2) and umount2(2) through libc (ctypes), and the mount table from /proc/self/mountinfo."""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

from weft.daemons.mountd.errors import KernelError

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8
APP_MOUNT_FLAGS = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
APP_MOUNT_OPTIONS = frozenset({"ro", "nosuid", "nodev", "noexec"})

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int


def _fail(what: str) -> KernelError:
    err = ctypes.get_errno()
    return KernelError(f"{what}: {os.strerror(err)}", err)


def mount(source: str, target: Path, fstype: str, flags: int) -> None:
    if _libc.mount(source.encode(), os.fsencode(target), fstype.encode(), flags, None) != 0:
        raise _fail(f"mount {source} on {target}")


def umount(target: Path, *, detach: bool = False) -> None:
    flags = UMOUNT_NOFOLLOW | (MNT_DETACH if detach else 0)
    if _libc.umount2(os.fsencode(target), flags) != 0:
        raise _fail(f"umount {target}")


@dataclass(frozen=True)
class MountPoint:
    target: Path
    dev: tuple[int, int]  # major, minor of the mounted file system's device
    fstype: str
    source: str
    options: frozenset[str]  # per-mount options (ro, nosuid, ...)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    if "\\" not in field:
        return field
    raw = field.encode()
    out, i = bytearray(), 0
    while i < len(raw):
        if raw[i:i + 1] == b"\\" and raw[i + 1:i + 4].isdigit():
            out.append(int(raw[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def parse_mountinfo(text: str) -> list[MountPoint]:
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            major, minor = fields[2].split(":")
            mounts.append(MountPoint(target=Path(_unescape(fields[4])), dev=(int(major), int(minor)),
                                     fstype=fields[separator + 1], source=_unescape(fields[separator + 2]),
                                     options=frozenset(fields[5].split(","))))
        except (ValueError, IndexError):
            continue  # a line the kernel would never write
    return mounts


def mount_table() -> list[MountPoint]:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
            return parse_mountinfo(fh.read())
    except OSError as exc:
        raise KernelError(f"cannot read /proc/self/mountinfo: {exc.strerror}", exc.errno or 0) from None
