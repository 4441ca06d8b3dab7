"""A copy of the image with one flipped byte in the root partition must not boot into that
root: dm-verity refuses the block, the root is never mounted, boot stops in the initrd.

The byte is in the first 4 KiB block but before the EROFS superblock (offset 1024), in
padding that EROFS itself never looks at — so only dm-verity can notice the change.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from vm_support import flip_byte

from weft.image.gpt import ROOT_X86_64, find_partition
from weft.vm.machine import Machine
from weft.vm.qemu import Accel

FLIP_OFFSET = 512
VERITY_REFUSED = r"device-mapper: verity: [0-9:]+: data block \d+ is corrupted"
# Where boot stops after the root fails to mount (initrd emergency mode or its refusal).
STOPPED = (r"(Failed to mount sysroot\.mount|Dependency failed for .*Initrd Root File System"
           r"|emergency mode|root account is locked)")
REACHED_ROOT = r"(Switching root\.|Reached target .*Multi-User System)"


@pytest.mark.own_vm
def test_tampered_root_fails_closed(shared_vm, test_image: Path, artifacts: Path, accel: Accel) -> None:
    shared_vm.stop()  # never two VMs at once
    tampered = artifacts / "tampered.raw"
    shutil.copyfile(test_image, tampered)
    root = find_partition(tampered, ROOT_X86_64)
    flip_byte(tampered, root.offset + FLIP_OFFSET)

    with Machine(tampered, artifacts, accel, name="tampered", test_console=False) as machine:
        refused = machine.wait_for_console(VERITY_REFUSED, timeout=900)
        stopped = machine.wait_for_console(STOPPED, timeout=300)
    log = machine.serial_text()
    assert not re.search(REACHED_ROOT, log), "boot went on into the tampered root"
    where = "\n".join(line for line in log.splitlines()
                      if re.search(f"{VERITY_REFUSED}|{STOPPED}", line))[:2000]
    print(f"tampered image: dm-verity refused the root ({refused.group(0)}); "
          f"boot stopped at: {stopped.group(0)}\n{where}")
    (artifacts / "tampered-summary.txt").write_text(where + "\n")
    tampered.unlink()
