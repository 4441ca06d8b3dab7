"""`weft vm run`: boot an image interactively, serial console on this terminal when headless."""
from __future__ import annotations

import logging
import signal
import sys
import tempfile
from pathlib import Path

from weft import settings
from weft.proc import inherited, run
from weft.vm.accel import detect_accel
from weft.vm.qemu import Display, VmConfig, create_overlay, disk_efi_vars, prepare_efi_vars, qemu_argv

log = logging.getLogger("weft.vm")
# QEMU's own window (--display gtk) needs the desktop session; the serial console, the terminal.
SESSION_VARIABLES = ("TERM", "DISPLAY", "WAYLAND_DISPLAY", "XAUTHORITY", "XDG_RUNTIME_DIR")


def accel_cache_file() -> Path:
    return settings.cache_dir() / "accel.json"


def _persistent_overlay(image: Path) -> tuple[Path, bool]:
    """`IMAGE.vm.qcow2` keeps the guest's state partition between runs of the same image;
    it starts over when the image was rebuilt (its backing data changed). Also says whether
    it is fresh."""
    overlay = image.with_name(image.name + ".vm.qcow2")
    if overlay.is_file() and overlay.stat().st_mtime >= image.stat().st_mtime:
        return overlay, False
    if overlay.is_file():
        log.info("vm: %s was rebuilt; starting with a fresh state partition", image.name)
    return create_overlay(image, overlay), True


def _disk_and_vars(image: Path, workdir: Path, *, snapshot: bool, secure_boot: bool) -> tuple[Path, Path]:
    """The disk and its UEFI variable store, fresh or kept together: the Secure Boot keys
    enrolled on a disk's first boot live in its variables (`IMAGE.vm.efivars.fd` beside the
    kept disk)."""
    if snapshot:
        return (create_overlay(image, workdir / "disk.qcow2"),
                prepare_efi_vars(workdir / "efivars.fd", secure_boot))
    disk, fresh = _persistent_overlay(image)
    efi_vars = disk_efi_vars(image.with_name(image.name + ".vm.efivars.fd"), fresh_disk=fresh,
                             secure_boot=secure_boot)
    return disk, efi_vars


def run_vm(image: Path, *, display: Display, snapshot: bool, secure_boot: bool = False) -> int:
    accel = detect_accel(accel_cache_file())
    with tempfile.TemporaryDirectory(prefix="weft-vm-") as tmp:
        workdir = Path(tmp)
        disk, efi_vars = _disk_and_vars(image, workdir, snapshot=snapshot, secure_boot=secure_boot)
        config = VmConfig(disk=disk, efi_vars=efi_vars, accel=accel, qmp_socket=workdir / "qmp.sock",
                          serial="stdio", display=display, secure_boot=secure_boot)
        log.info("vm: booting %s (%s, %s%s)", image, accel.upper(), "snapshot" if snapshot else f"state in {disk}",
                 ", Secure Boot" if secure_boot else "")
        log.info("vm: QMP socket %s", config.qmp_socket)
        if display == "vnc":
            log.info("vm: display on VNC 127.0.0.1:5900")
        log.info("vm: serial console follows; Ctrl-A x quits QEMU")
        # Interactive: QEMU owns the terminal until the guest powers off or the user quits.
        # On SIGTERM, exit through Python so that run() kills QEMU instead of orphaning it.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        run(qemu_argv(config), capture=False, env=inherited(*SESSION_VARIABLES))
        return 0
