"""Which QEMU accelerator works here: KVM if a guest actually runs under it, else TCG.

`/dev/kvm` existing proves nothing: on the build machines it exists, but ordinary guests
hang under it, or QEMU aborts setting up the host CPU model. So the probe starts the real
machine configuration (q35, the same CPU model, OVMF) without a disk under KVM: if the
firmware reaches its boot manager (it prints "BdsDxe" on the serial port, ~2 s under KVM)
within the time limit, KVM works. The result is cached per host kernel and QEMU binary.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path

from weft.proc import spawn
from weft.vm.qemu import Accel, cpu_model, firmware_args, prepare_efi_vars, qemu_binary

PROBE_TIMEOUT_S = 20.0
FIRMWARE_REACHED_BOOT_MANAGER = b"BdsDxe"

log = logging.getLogger("weft.vm")


def _kvm_runs_a_guest(qemu: str) -> bool:
    with tempfile.TemporaryDirectory(prefix="weft-kvm-probe-") as tmp:
        efi_vars = prepare_efi_vars(Path(tmp) / "efivars.fd")
        argv = [qemu, "-accel", "kvm", "-machine", "q35", "-cpu", cpu_model("kvm"), "-m", "256",
                "-nodefaults", "-display", "none", "-serial", "stdio", "-no-reboot",
                *firmware_args(efi_vars)]
        # Spawned (not run()): the probe guest never exits by itself, and its partial serial
        # output is the answer.
        proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            out, _ = proc.communicate(timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        return FIRMWARE_REACHED_BOOT_MANAGER in out


def _cache_key(qemu: str) -> str:
    stat = os.stat(qemu)
    return f"{os.uname().release}|{qemu}|{stat.st_size}|{stat.st_mtime_ns}|firmware-probe"


def detect_accel(cache_file: Path) -> Accel:
    """`kvm` if a probe guest boots under KVM (cached), otherwise `tcg`."""
    qemu = qemu_binary()
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    key = _cache_key(qemu)
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == key and cached.get("accel") in ("kvm", "tcg"):
            return "kvm" if cached["accel"] == "kvm" else "tcg"
    except (OSError, ValueError):
        pass
    log.info("vm: probing whether KVM runs a guest here")
    accel: Accel = "kvm" if _kvm_runs_a_guest(qemu) else "tcg"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps({"key": key, "accel": accel}))
    return accel
