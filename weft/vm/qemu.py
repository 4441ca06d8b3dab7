"""The QEMU command line for booting a WEFT disk image (q35, OVMF, virtio disk)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from weft.errors import WeftError
from weft.proc import find_tool, run

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# The virtual disk is bigger than the image: systemd-repart puts the state partition there.
DISK_SIZE = "4G"

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


def cpu_model(accel: Accel) -> str:
    return "host" if accel == "kvm" else "max"


def option_value(value: str | Path) -> str:
    """A value inside a QEMU `key=value,...` option: a comma is written as two."""
    return str(value).replace(",", ",,")


def firmware_args(efi_vars: Path) -> list[str]:
    return ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={option_value(OVMF_CODE)}",
            "-drive", f"if=pflash,format=raw,unit=1,file={option_value(efi_vars)}"]


def qemu_binary() -> str:
    return find_tool("qemu-system-x86_64", "install qemu-system-x86 (bash ci/setup.sh)")


def prepare_efi_vars(dest: Path) -> Path:
    """A private writable copy of the OVMF variable store."""
    if not OVMF_CODE.is_file() or not OVMF_VARS.is_file():
        raise WeftError(f"OVMF firmware not found at {OVMF_CODE}; install ovmf (bash ci/setup.sh)")
    shutil.copyfile(OVMF_VARS, dest)
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
    """The full command line; `binary` defaults to qemu-system-x86_64 from PATH."""
    argv = [
        binary or qemu_binary(),
        "-accel", config.accel,
        "-machine", "q35",
        "-cpu", cpu_model(config.accel),
        "-m", str(config.memory_mb),
        "-smp", str(config.cpus),
        *firmware_args(config.efi_vars),
        "-drive", f"if=virtio,format=qcow2,file={option_value(config.disk)}",
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
