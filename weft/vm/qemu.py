"""The QEMU command line for booting a WEFT disk image (q35, OVMF, virtio disk), with or without
UEFI Secure Boot."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from weft.errors import WeftError
from weft.proc import find_tool, run

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_SECBOOT_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
# The empty store (no keys): with the secboot code the VM starts in setup mode, where
# systemd-boot enrolls the image's own keys (loader/keys/auto on the ESP) on the first boot.
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# The virtual disk is bigger than the image: systemd-repart grows root slot A and adds slot B and
# the state partition there (6 GiB: 2 x 1.5 GiB root slots, the ESP, and room for /var).
DISK_SIZE = "6G"

Display = Literal["none", "gtk", "vnc"]
Accel = Literal["kvm", "tcg"]


class VmConfig(BaseModel):
    """One QEMU invocation. `serial` is "stdio" (the terminal) or a log file path."""

    model_config = ConfigDict(frozen=True)
    disk: Path
    efi_vars: Path
    accel: Accel
    qmp_socket: Path
    serial: Literal["stdio"] | Path
    display: Display = "none"
    test_console: Path | None = None
    memory_mb: int = 4096
    cpus: int = 2
    secure_boot: bool = False
    # Extra raw disks, attached read-only after the system disk (e.g. update media).
    drives: tuple[Path, ...] = ()


class Firmware(BaseModel):
    """The OVMF pair a VM boots: the read-only code and the template of its variable store."""

    model_config = ConfigDict(frozen=True)
    code: Path
    vars_template: Path


def firmware(secure_boot: bool) -> Firmware:
    """The one place that picks the firmware files (nothing is checked on disk here)."""
    return Firmware(code=OVMF_SECBOOT_CODE if secure_boot else OVMF_CODE, vars_template=OVMF_VARS)


def installed_firmware(secure_boot: bool) -> Firmware:
    chosen = firmware(secure_boot)
    missing = [str(path) for path in (chosen.code, chosen.vars_template) if not path.is_file()]
    if missing:
        kind = "OVMF Secure Boot firmware" if secure_boot else "OVMF firmware"
        raise WeftError(f"{kind} not found: {', '.join(missing)}; install the ovmf package (bash ci/setup.sh)")
    return chosen


def cpu_model(accel: Accel) -> str:
    return "host" if accel == "kvm" else "max"


def option_value(value: str | Path) -> str:
    """A value inside a QEMU `key=value,...` option: a comma is written as two."""
    return str(value).replace(",", ",,")


def machine_type(secure_boot: bool) -> str:
    # The secboot firmware keeps its variables behind SMM (a guest OS cannot write them
    # directly); without SMM it stops before booting anything.
    return "q35,smm=on" if secure_boot else "q35"


def firmware_args(efi_vars: Path, secure_boot: bool = False) -> list[str]:
    code = firmware(secure_boot).code
    args = ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={option_value(code)}",
            "-drive", f"if=pflash,format=raw,unit=1,file={option_value(efi_vars)}"]
    if secure_boot:
        # Only SMM code may write the flash holding the variables (and so the enrolled keys).
        args += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    return args


def qemu_binary() -> str:
    return find_tool("qemu-system-x86_64", "install qemu-system-x86 (bash ci/setup.sh)")


def prepare_efi_vars(dest: Path, secure_boot: bool = False) -> Path:
    """A private writable copy of the empty OVMF variable store (a fresh machine)."""
    shutil.copyfile(installed_firmware(secure_boot).vars_template, dest)
    return dest


def disk_efi_vars(dest: Path, *, fresh_disk: bool, secure_boot: bool = False) -> Path:
    """The variable store that belongs with a disk: fresh with a fresh disk, else the one kept
    from the disk's earlier boots. Secure Boot keys are enrolled on a disk's first boot and
    live in these variables, so a disk and its variables start over together (a store that
    went missing is made fresh: the firmware is in setup mode again and the keys get enrolled
    again)."""
    if fresh_disk or not dest.is_file():
        return prepare_efi_vars(dest, secure_boot)
    installed_firmware(secure_boot)  # the same clear error as for a fresh machine
    return dest


def create_overlay(image: Path, overlay: Path) -> Path:
    """A qcow2 overlay on the (unchanged) raw image, with room for the state partition. Guest
    writes land in the overlay only: a fresh overlay is a fresh machine (`--snapshot`)."""
    if not image.is_file():
        raise WeftError(f"image {image} does not exist (build it with: weft image build)")
    qemu_img = find_tool("qemu-img", "install qemu-utils (bash ci/setup.sh)")
    overlay.unlink(missing_ok=True)
    run([qemu_img, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", image.resolve(),
         overlay, DISK_SIZE])
    return overlay


def qemu_argv(config: VmConfig, binary: str | None = None) -> list[str]:
    """The full command line; `binary` defaults to qemu-system-x86_64 from PATH. There is no
    -no-reboot: a guest reboot (systemctl reboot, systemd-boot after enrolling keys) resets the
    VM and QEMU keeps running, with the same disk and variable store."""
    argv = [
        binary or qemu_binary(),
        "-accel", config.accel,
        "-machine", machine_type(config.secure_boot),
        "-cpu", cpu_model(config.accel),
        "-m", str(config.memory_mb),
        "-smp", str(config.cpus),
        *firmware_args(config.efi_vars, config.secure_boot),
        "-drive", f"if=virtio,format=qcow2,file={option_value(config.disk)}",
        *(arg for drive in config.drives
          for arg in ("-drive", f"if=virtio,format=raw,readonly=on,file={option_value(drive)}")),
        "-chardev", f"socket,id=qmp,path={option_value(config.qmp_socket)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-device", "virtio-rng-pci",
        "-nic", "none",
        # The desktop: virtio-gpu (the standard VGA's bochs DRM driver cannot import buffers,
        # and wlroots' DRM backend refuses it) and an absolute pointer, which QMP's
        # input-send-event drives at screen coordinates (tests/vm).
        "-vga", "none",
        "-device", "virtio-vga",
        "-device", "virtio-tablet-pci",
    ]
    if config.serial == "stdio":
        # mon: multiplexes the QEMU monitor onto the terminal (Ctrl-A x quits).
        argv += ["-serial", "mon:stdio"]
    else:
        argv += ["-chardev", f"file,id=seriallog,path={option_value(config.serial)}", "-serial", "chardev:seriallog"]
    if config.display == "vnc":
        argv += ["-display", "vnc=127.0.0.1:0"]
    else:
        argv += ["-display", config.display]
    if config.test_console is not None:
        argv += [
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=testshell,path={option_value(config.test_console)},server=on,wait=off",
            "-device", "virtconsole,chardev=testshell",
        ]
    return argv
