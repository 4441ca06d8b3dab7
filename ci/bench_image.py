#!/usr/bin/env python3
"""Image figures, measured from scratch: prints one JSON line

  {"build_s", "rebuild_s", "image_bytes", "image_zst_bytes", "boot_multi_user_s",
   "boot_appd_ready_s", "accel"}

build_s: full build of the test image (mkosi's incremental cache and tools tree dropped;
downloaded packages stay cached). rebuild_s: the build again after changing one Python file.
Sizes: the raw image and its zstd-compressed form. Boot times: from QEMU start until
multi-user.target is active and until weft-appd.service is ready (null when the image has no
weft-appd yet). Progress goes to stderr.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import zstandard

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from weft.image.build import BuildConfig, build_image, default_mkosi_cache  # noqa: E402
from weft.vm.accel import detect_accel  # noqa: E402
from weft.vm.machine import Machine  # noqa: E402
from weft.vm.run import accel_cache_file  # noqa: E402

TOUCHED_FILE = REPO / "weft" / "vm" / "__init__.py"
BOOT_TIMEOUT_S = 900


def _timed_build(config: BuildConfig) -> tuple[float, Path]:
    start = time.monotonic()
    image = build_image(config)
    return time.monotonic() - start, image


def _rebuild_after_python_change(config: BuildConfig) -> float:
    original = TOUCHED_FILE.read_bytes()
    try:
        TOUCHED_FILE.write_bytes(original + f"# bench {time.time_ns()}\n".encode())
        seconds, _ = _timed_build(config.model_copy(update={"force_all": False}))
    finally:
        TOUCHED_FILE.write_bytes(original)
    return seconds


def _zst_size(image: Path) -> int:
    with tempfile.TemporaryFile() as out, open(image, "rb") as src:
        zstandard.ZstdCompressor(level=3, threads=-1).copy_stream(src, out)
        return out.tell()


KERNEL_STARTED = r"Linux version \d"


def _active_since_kernel_start(machine: Machine, unit: str) -> float:
    """Seconds from kernel start until `unit` became active (for Type=notify: ready),
    from systemd's own monotonic timestamps."""
    machine.wait_for_unit(unit, timeout=BOOT_TIMEOUT_S)
    value = machine.succeed(f"systemctl show --property=ActiveEnterTimestampMonotonic --value {unit}")
    return int(value) / 1e6


def _boot_times(image: Path, workdir: Path) -> tuple[float, float | None, str]:
    """Boot times from QEMU start: the host sees the kernel's first console line (firmware
    and boot loader time), systemd's monotonic clock gives the rest. The serial console's
    status lines are no use here: systemd stops printing them once a getty owns the console."""
    accel = detect_accel(accel_cache_file())
    machine = Machine(image, workdir, accel, name="bench")
    machine.start()
    try:
        machine.wait_for_console(KERNEL_STARTED, BOOT_TIMEOUT_S)
        kernel_started = time.monotonic() - machine.started_at
        machine.wait_for_shell(BOOT_TIMEOUT_S)
        multi_user = kernel_started + _active_since_kernel_start(machine, "multi-user.target")
        appd = None
        if machine.execute("systemctl cat weft-appd.service", timeout=60)[0] == 0:
            appd = kernel_started + _active_since_kernel_start(machine, "weft-appd.service")
        else:
            print("bench: the image has no weft-appd yet; boot_appd_ready_s is null", file=sys.stderr)
        machine.shutdown()
    finally:
        machine.kill()
    return multi_user, appd, accel


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="weft-bench-") as tmp:
        workdir = Path(tmp)
        config = BuildConfig(repo=REPO, profile="test", out_dir=workdir / "out",
                             mkosi_cache=default_mkosi_cache(), force_all=True)
        build_s, image = _timed_build(config)
        print(f"bench: full build {build_s:.1f} s", file=sys.stderr)
        rebuild_s = _rebuild_after_python_change(config)
        print(f"bench: rebuild after a Python change {rebuild_s:.1f} s", file=sys.stderr)
        image_bytes = image.stat().st_size
        image_zst_bytes = _zst_size(image)
        print(f"bench: image {image_bytes} bytes, {image_zst_bytes} zstd; booting", file=sys.stderr)
        multi_user_s, appd_s, accel = _boot_times(image, workdir / "vm")
        shutil.rmtree(workdir / "out", ignore_errors=True)
    print(json.dumps({
        "build_s": round(build_s, 1), "rebuild_s": round(rebuild_s, 1),
        "image_bytes": image_bytes, "image_zst_bytes": image_zst_bytes,
        "boot_multi_user_s": round(multi_user_s, 1),
        "boot_appd_ready_s": None if appd_s is None else round(appd_s, 1),
        "accel": accel,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
