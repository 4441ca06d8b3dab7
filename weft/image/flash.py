"""`weft image flash`: write the image to a whole block device, then read it back to verify.

Refused: anything that is not a whole-disk block device, a disk with a mounted (or swap, or
device-mapper-held) partition, the disk the running system lives on, and a disk smaller than
the image. The user confirms unless --yes.
"""
from __future__ import annotations

import hashlib
import logging
import os
import stat
import sys
from pathlib import Path

from weft.errors import UsageError, WeftError

CHUNK = 4 << 20
PROGRESS_STEP = 10  # percent between progress lines
SYS_BLOCK = Path("/sys/class/block")

log = logging.getLogger("weft.image")


def _sysfs_name(device: Path) -> str:
    st = os.stat(device)
    if not stat.S_ISBLK(st.st_mode):
        raise UsageError(f"{device} is not a block device")
    link = Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    return link.resolve().name


def _partitions_of(disk: str) -> list[str]:
    return [p.name for p in (SYS_BLOCK / disk).iterdir() if (p / "partition").is_file()]


def _devnum(name: str) -> str:
    return (SYS_BLOCK / name / "dev").read_text().strip()


def _whole_disk_of(name: str) -> set[str]:
    """The whole disks under block device `name` (through partitions and device-mapper)."""
    path = SYS_BLOCK / name
    slaves = list((path / "slaves").iterdir()) if (path / "slaves").is_dir() else []
    if slaves:
        return {disk for slave in slaves for disk in _whole_disk_of(slave.name)}
    if (path / "partition").is_file():
        return {path.resolve().parent.name}
    return {name}


def _system_disks() -> set[str]:
    """Disks backing the running system's mounts of /, /usr, /boot and /efi."""
    disks: set[str] = set()
    for mount in ("/", "/usr", "/boot", "/efi", "/boot/efi"):
        try:
            dev = os.stat(mount).st_dev
        except OSError:
            continue
        link = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
        if link.exists():
            disks |= _whole_disk_of(link.resolve().name)
    return disks


def _in_use(disk: str) -> list[str]:
    """Why `disk` or one of its partitions is busy (mounted, swap, held by device-mapper)."""
    names = [disk, *_partitions_of(disk)]
    numbers = {_devnum(n): n for n in names}
    reasons = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[2] in numbers:
            reasons.append(f"/dev/{numbers[fields[2]]} is mounted on {fields[4]}")
    for line in Path("/proc/swaps").read_text().splitlines()[1:]:
        if Path(line.split()[0]).name in names:
            reasons.append(f"{line.split()[0]} is in use as swap")
    for name in names:
        holders = SYS_BLOCK / name / "holders"
        if holders.is_dir() and any(holders.iterdir()):
            reasons.append(f"/dev/{name} is held by {', '.join(h.name for h in holders.iterdir())}")
    return reasons


def check_target(image: Path, device: Path) -> int:
    """Refuse unsafe targets; return the device size in bytes."""
    if not device.exists():
        raise UsageError(f"{device} does not exist")
    name = _sysfs_name(device)
    if (SYS_BLOCK / name / "partition").is_file():
        raise UsageError(f"{device} is a partition; give the whole disk")
    if name in _system_disks():
        raise WeftError(f"refusing to write to {device}: the running system is on it")
    if busy := _in_use(name):
        raise WeftError(f"refusing to write to {device}: " + "; ".join(busy))
    size = int((SYS_BLOCK / name / "size").read_text()) * 512
    if size < image.stat().st_size:
        raise WeftError(f"{device} ({size} bytes) is smaller than {image.name} "
                        f"({image.stat().st_size} bytes)")
    return size


def _confirm(image: Path, device: Path, size: int) -> None:
    if not sys.stdin.isatty():
        raise UsageError("no terminal to confirm on; pass --yes to write without asking")
    answer = input(f"Write {image} to {device} ({size / 1e9:.1f} GB)? Everything on it is lost. "
                   "Type 'yes' to continue: ")
    if answer.strip() != "yes":
        raise WeftError("not confirmed; nothing was written")


def _progress(label: str, done: int, total: int, previous: int) -> int:
    """Log the percentage every PROGRESS_STEP; return the last one logged."""
    percent = done * 100 // total // PROGRESS_STEP * PROGRESS_STEP
    if percent > previous:
        log.info("flash: %s %d%%", label, percent)
        return percent
    return previous


def _write(image: Path, device: Path) -> str:
    total = image.stat().st_size
    digest = hashlib.sha256()
    # O_EXCL on a block device fails if anything (a mount, device-mapper) holds it.
    fd = os.open(device, os.O_WRONLY | os.O_EXCL)
    try:
        with open(image, "rb") as src:
            done, shown = 0, -1
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:  # os.write may write less than asked
                    view = view[os.write(fd, view):]
                done += len(chunk)
                shown = _progress("writing", done, total, shown)
        os.fsync(fd)
    finally:
        os.close(fd)
    return digest.hexdigest()


def _read_back(device: Path, length: int) -> str:
    digest = hashlib.sha256()
    with open(device, "rb") as dev:
        # Drop cached pages so the comparison reads what reached the device.
        os.posix_fadvise(dev.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        done, shown = 0, -1
        while done < length:
            chunk = dev.read(min(CHUNK, length - done))
            if not chunk:
                break
            digest.update(chunk)
            done += len(chunk)
            shown = _progress("verifying", done, length, shown)
    return digest.hexdigest()


def flash_image(image: Path, device: Path, *, assume_yes: bool) -> None:
    size = check_target(image, device)
    if not assume_yes:
        _confirm(image, device, size)
    written = _write(image, device)
    if _read_back(device, image.stat().st_size) != written:
        raise WeftError(f"verification failed: {device} does not read back as {image.name}")
    log.info("flash: %s written to %s and verified (sha256 %s)", image.name, device, written)
