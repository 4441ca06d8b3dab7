"""An update medium: a disk image holding an update source, to attach to a VM or write to a USB stick.

The file system is ext4 labelled WEFT-UPDATES (e2fsprogs' `mkfs.ext4 -d` fills it from the
source directory without mounting anything). On the machine to update (docs/updates.md):

    mount -o ro LABEL=WEFT-UPDATES /run/weft-updates && systemd-sysupdate update

`/run/weft-updates` is where the image's sysupdate.d transfers look. Nothing on the medium is
trusted: systemd-pull checks SHA256SUMS.gpg against the image's update key and every file
against SHA256SUMS.
"""
from __future__ import annotations

import logging
from pathlib import Path

from weft.errors import WeftError
from weft.proc import find_tool, run

log = logging.getLogger("weft.image")

LABEL = "WEFT-UPDATES"
MOUNT_POINT = Path("/run/weft-updates")
# ext4's own metadata (inode tables, journal) on top of the files.
OVERHEAD_BYTES = 64 << 20
SLACK = 1.05


def write_update_medium(source: Path, image: Path, label: str = LABEL) -> Path:
    """An ext4 image at `image` (replaced) with the files of `source` at its top level."""
    if not (source / "SHA256SUMS").is_file() or not (source / "SHA256SUMS.gpg").is_file():
        raise WeftError(f"{source} is not an update source (no SHA256SUMS/SHA256SUMS.gpg): "
                        "make one with `weft image publish`")
    if len(label.encode()) > 16:
        raise WeftError(f"file system label {label!r} is longer than ext4's 16 bytes")
    mkfs = find_tool("mkfs.ext4", "install e2fsprogs (bash ci/setup.sh)")
    content = sum(f.stat().st_size for f in source.rglob("*") if f.is_file())
    size_mib = int((content * SLACK + OVERHEAD_BYTES) / (1 << 20)) + 1
    log.info("image: writing the update medium %s (%d MiB, from %s)", image, size_mib, source)
    partial = image.with_name(image.name + ".partial")
    partial.unlink(missing_ok=True)
    # No journal: the medium is written once here and mounted read-only by the machine.
    run([mkfs, "-q", "-F", "-L", label, "-O", "^has_journal", "-E", "root_owner=0:0", "-d", source,
         partial, f"{size_mib}M"])
    partial.replace(image)
    return image
