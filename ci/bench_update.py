#!/usr/bin/env python3
"""What an OS update costs: prints one JSON line

  {"update_bytes", "apply_s", "reboot_to_ready_s", "rollback_s", "rollback_boots", "targets", "accel"}

Boots the test image (release 1) with Secure Boot firmware and the update media of releases 2
and 3 (tests/vm/update_support.py; `bash ci/test.sh` builds the releases, or see there), then:
- update_bytes: the size of release 2's artefacts (root, verity, UKI): what one update reads;
- apply_s: `systemd-sysupdate update` from the mounted medium to release 2, wall time in the guest;
- reboot_to_ready_s: `systemctl reboot` → release 2 blessed (boot-complete reached, UKI renamed);
- rollback_s / rollback_boots: after updating to release 3 (whose app daemon never starts),
  `systemctl reboot` → the test shell answers on release 2 again, and how many boots that took.
All under TCG on this machine (progress on stderr). Targets (issue 10): an update applies in
<= 60 s; a failed one is back on the good version within 3 boots (of the new version).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "vm"))

from update_support import SYSUPDATE, prepare_media, running, use_medium  # type: ignore[import-not-found]  # noqa: E402  (tests/vm, on sys.path above)

from weft.image.profiles import image_path  # noqa: E402
from weft.vm.accel import detect_accel  # noqa: E402
from weft.vm.machine import Machine  # noqa: E402
from weft.vm.run import accel_cache_file  # noqa: E402

BOOT_S = 900
TARGETS = {"apply_s": 60, "rollback_boots_of_new_version": 3}


def progress(message: str) -> None:
    print(f"bench_update: {message}", file=sys.stderr, flush=True)


def apply(machine: Machine, label: str) -> float:
    use_medium(machine, label)
    out = machine.succeed(f"s=$(date +%s%N) && {SYSUPDATE} update >/dev/null 2>&1 && e=$(date +%s%N) && "
                          "echo $(( (e - s) / 1000000 ))", timeout=1200)
    return round(int(out.strip()) / 1000, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, default=image_path(REPO, "test"))
    args = parser.parse_args()
    accel = detect_accel(accel_cache_file())
    logs = REPO / "test-artifacts" / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=REPO / "build") as tmp:
        progress("publishing releases 2 and 3 and writing their update media")
        releases = prepare_media(Path(tmp))
        two, three = releases["2"], releases["3"]
        with Machine(args.image, logs, accel, name="bench-update", secure_boot=True,
                     drives=(two.medium, three.medium)) as machine:
            machine.wait_for_shell(BOOT_S)
            progress("booted release 1; applying release 2")
            apply_s = apply(machine, two.label)
            progress(f"applied in {apply_s} s; rebooting into release 2")
            started = time.monotonic()
            machine.reboot(BOOT_S)
            machine.wait_until_succeeds(f"test -e /boot/EFI/Linux/{two.uki.image_id}_2.efi", timeout=BOOT_S)
            reboot_to_ready = round(time.monotonic() - started, 1)
            assert running(machine)[1] == two.uki.roothash
            progress(f"release 2 ready (blessed) {reboot_to_ready} s after the reboot; applying release 3")
            apply(machine, three.label)
            started = time.monotonic()
            mark = machine.reboot(BOOT_S, shell=False)
            boots = machine.wait_for_boots(lambda hashes: hashes[-1:] == [two.uki.roothash], since=mark,
                                           timeout=BOOT_S * 4)
            machine.wait_for_shell(BOOT_S)
            rollback_s = round(time.monotonic() - started, 1)
            assert running(machine)[1] == two.uki.roothash
            progress(f"back on release 2 after {len(boots)} boots, {rollback_s} s")
    print(json.dumps({"update_bytes": two.bytes, "apply_s": apply_s, "reboot_to_ready_s": reboot_to_ready,
                      "rollback_s": rollback_s, "rollback_boots": len(boots), "targets": TARGETS,
                      "accel": accel}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
