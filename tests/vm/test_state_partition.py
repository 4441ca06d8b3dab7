"""The writable state partition: absent from the built image, created by systemd-repart on
first boot in the free space of the (larger) disk, mounted on /var, and kept across a reboot."""
from __future__ import annotations

import json
import re
import secrets
from pathlib import Path

from weft.image.gpt import ROOT_X86_64, read_partitions
from weft.vm.machine import Machine
from weft.vm.qemu import DISK_SIZE

GIB = 1 << 30
DISK_SIZE_GIB = int(DISK_SIZE.removesuffix("G"))
REPART_D = Path(__file__).resolve().parents[2] / "mkosi.extra/usr/lib/repart.d"


def _slot_bytes(conf: str) -> int:
    """SizeMinBytes= of one first-boot partition definition (M suffix)."""
    match = re.search(r"^SizeMinBytes=(\d+)M$", (REPART_D / conf).read_text(), re.M)
    assert match, conf
    return int(match.group(1)) << 20


def _state_partition(machine: Machine) -> dict:
    listing = machine.succeed("lsblk --json --bytes --output NAME,PARTLABEL,FSTYPE,SIZE,MOUNTPOINT")
    devices = json.loads(listing)
    parts = [child for disk in devices["blockdevices"] for child in disk.get("children", [])
             if child.get("partlabel") == "weft-state"]
    assert len(parts) == 1, devices
    return parts[0]


def test_built_image_has_no_state_partition(test_image: Path) -> None:
    assert "weft-state" not in [p.label for p in read_partitions(test_image)]


def test_state_partition_created_on_first_boot_and_mounted_on_var(machine: Machine, test_image: Path) -> None:
    state = _state_partition(machine)
    assert state["fstype"] == "ext4"
    assert state["mountpoint"] == "/var"
    # repart gave /var the rest of the virtual disk (DISK_SIZE) after the image's partitions, with
    # root slot A grown to a full slot and slot B (root + verity) added (docs/updates.md).
    built = sum(p.size for p in read_partitions(test_image) if p.type_uuid != ROOT_X86_64)
    slots = 2 * _slot_bytes("11-root.conf") + _slot_bytes("20-root-verity-b.conf")
    rest = DISK_SIZE_GIB * GIB - built - slots
    assert rest - (16 << 20) <= state["size"] <= rest
    assert int(machine.succeed("df --output=size -B1 /var | tail -1")) > rest - (256 << 20)
    machine.succeed("touch /var/lib/weft/write-test && rm /var/lib/weft/write-test")


def test_state_survives_a_reboot(machine: Machine) -> None:
    marker = secrets.token_hex(16)
    machine.succeed(f"echo {marker} > /var/lib/weft/reboot-marker && sync")
    boot_id = machine.succeed("cat /proc/sys/kernel/random/boot_id").strip()
    machine.reboot(timeout=900)
    assert machine.succeed("cat /proc/sys/kernel/random/boot_id").strip() != boot_id
    assert machine.succeed("cat /var/lib/weft/reboot-marker").strip() == marker
    assert _state_partition(machine)["mountpoint"] == "/var"
    machine.wait_for_unit("multi-user.target")
    assert machine.succeed("systemctl list-units --failed --no-legend --plain") == ""
