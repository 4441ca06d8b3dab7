"""Which QEMU accelerator works here: KVM if a guest actually runs under it, else TCG.

`/dev/kvm` existing proves nothing (on the build machines it exists, but only a special
kind of guest runs and ordinary guests hang), so a tiny boot sector is booted under KVM:
if it writes to the serial port within a few seconds, KVM works. The result is cached per
host kernel and QEMU binary, since the probe costs seconds.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

from weft.proc import find_tool

Accel = Literal["kvm", "tcg"]
PROBE_TIMEOUT_S = 8.0
PROBE_MARK = b"K"

# A 16-bit boot sector (the BIOS loads it at 0x7c00):
#   mov dx, 0x3f8 ; mov al, 'K' ; out dx, al ; hlt ; jmp $-1
PROBE_CODE = bytes([0xBA, 0xF8, 0x03, 0xB0, ord(PROBE_MARK), 0xEE, 0xF4, 0xEB, 0xFD])
BOOT_SIGNATURE = b"\x55\xaa"


def _boot_sector() -> bytes:
    return PROBE_CODE + bytes(510 - len(PROBE_CODE)) + BOOT_SIGNATURE


def _kvm_runs_a_guest(qemu: str) -> bool:
    with tempfile.TemporaryDirectory(prefix="weft-kvm-probe-") as tmp:
        disk = Path(tmp) / "probe.img"
        disk.write_bytes(_boot_sector())
        argv = [qemu, "-accel", "kvm", "-machine", "pc", "-m", "16", "-nodefaults",
                "-display", "none", "-serial", "stdio", "-no-reboot",
                "-drive", f"file={disk},format=raw,if=floppy", "-boot", "a"]
        # Launched directly (not via proc.run): the probe is expected to be killed by the
        # timeout, and its partial output is the answer.
        try:
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  timeout=PROBE_TIMEOUT_S, check=False)
            return PROBE_MARK in proc.stdout
        except subprocess.TimeoutExpired as exc:
            return PROBE_MARK in (exc.stdout or b"")


def _cache_key(qemu: str) -> str:
    stat = os.stat(qemu)
    return f"{os.uname().release}|{qemu}|{stat.st_size}|{stat.st_mtime_ns}"


def detect_accel(cache_file: Path) -> Accel:
    """`kvm` if a probe guest boots under KVM (cached), otherwise `tcg`."""
    qemu = find_tool("qemu-system-x86_64", "install qemu-system-x86 (bash ci/setup.sh)")
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    key = _cache_key(qemu)
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == key and cached.get("accel") in ("kvm", "tcg"):
            return cached["accel"]
    except (OSError, ValueError):
        pass
    print("vm: probing whether KVM runs a guest here", file=sys.stderr)
    accel: Accel = "kvm" if _kvm_runs_a_guest(qemu) else "tcg"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps({"key": key, "accel": accel}))
    return accel
