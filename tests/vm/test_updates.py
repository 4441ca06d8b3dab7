"""A/B updates with systemd-sysupdate, boot counting and automatic rollback, and Secure Boot
refusing an edited UKI — on a machine of its own, with Secure Boot firmware (it reboots several
times and ends unable to boot, so it cannot be the shared one).

The machine boots the test image (release 1) with two read-only update media attached
(tests/vm/update_support.py: releases 2 and 3, published with `weft image publish`; 3's app
daemon never starts). The tests run in order, each on the state the previous one left:
factory state → tampered sources refused → update to 2 → update to 3, whose boots fail until
systemd-boot falls back to 2 by itself → a UKI with an edited command line is refused.
"""
from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from update_support import EDITED_VERSION, FLIP_OFFSET, SOURCE, SYSUPDATE, Release, prepare_media, running, use_medium

from weft.vm.machine import Machine
from weft.vm.qemu import Accel

pytestmark = pytest.mark.own_vm

ESP_UKIS = "/boot/EFI/Linux"
IMAGE_ID = "weft-test"
BOOT_S = 900
MARKER = "/var/lib/weft/update-test-marker"
# systemd-boot tries a new version this often (sysupdate.d/20-uki.conf TriesLeft=).
TRIES = 3


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Release]]:
    workdir = tmp_path_factory.mktemp("updates")
    yield prepare_media(workdir)
    shutil.rmtree(workdir, ignore_errors=True)  # ~2 GB of media


@pytest.fixture(scope="module")
def vm(shared_vm, releases: dict[str, Release], test_image: Path, artifacts: Path,
       accel: Accel) -> Iterator[Machine]:
    shared_vm.stop()  # never two VMs at once
    machine = Machine(test_image, artifacts, accel, name="updates", secure_boot=True,
                      drives=tuple(release.medium for release in releases.values()))
    try:
        machine.start()
        machine.wait_for_shell(BOOT_S)
        yield machine
    finally:
        machine.kill()  # the last test leaves it in the firmware
        machine.close()


def _labels(vm: Machine) -> list[str]:
    """The partition labels of the system disk, in disk order, as the GPT has them now (lsblk
    and udev show the labels the kernel read at boot: sysupdate's new ones only after a reboot)."""
    return vm.succeed("for part in $(ls /dev/vda[0-9]* | sort -V); do "
                      "blkid -p -o value -s PART_ENTRY_NAME $part; done").split()


def _ukis(vm: Machine) -> list[str]:
    return sorted(vm.succeed(f"ls {ESP_UKIS}").split())


def test_factory_machine_has_release_1_an_empty_slot_and_secure_boot(vm: Machine) -> None:
    assert vm.succeed("bootctl status 2>/dev/null | grep 'Secure Boot'").split(":", 1)[1].strip() \
        == "enabled (user)"
    assert running(vm)[0] == "1"
    assert _labels(vm) == ["esp", f"{IMAGE_ID}_1_verity", f"{IMAGE_ID}_1", "_empty", "_empty", "weft-state"]
    # Slot A was grown from the built root's size into a full slot, like slot B.
    slot_a, slot_b = vm.succeed("lsblk -ndbo SIZE /dev/vda3 /dev/vda5").split()
    assert int(slot_a) == int(slot_b) == 1536 << 20
    assert _ukis(vm) == [f"{IMAGE_ID}_1.efi"]
    vm.wait_for_unit("weft-boot-check.service")


def test_a_tampered_source_is_refused_and_nothing_is_installed(vm: Machine, releases: dict[str, Release]) -> None:
    two = releases["2"]
    vm.succeed(f"mkdir -p /run/media-2 /run/media-3 && mount -o ro /dev/disk/by-label/{two.label} /run/media-2"
               f" && mount -o ro /dev/disk/by-label/{releases['3'].label} /run/media-3")
    verity = next(name for name in two.files if "-verity." in name)
    # A source of links to release 2's files, with a copy of its verity file whose byte at
    # FLIP_OFFSET is flipped; each case then swaps SHA256SUMS(.gpg) for the tampered ones.
    vm.succeed(f"rm -rf {SOURCE} && mkdir -p {SOURCE} && ln -s /run/media-2/* {SOURCE}/ && rm {SOURCE}/{verity} && "
               f"cp /run/media-2/{verity} {SOURCE}/{verity} && python3 -c \"import sys; f = open(sys.argv[1], 'r+b'); "
               f"f.seek({FLIP_OFFSET}); b = f.read(1); f.seek({FLIP_OFFSET}); f.write(bytes([b[0] ^ 255]))\" "
               f"{SOURCE}/{verity}")
    labels, ukis = _labels(vm), _ukis(vm)
    # case: (SHA256SUMS, its signature, what systemd-pull says)
    cases = {
        "a file that does not match the signed SHA256SUMS": (
            "/run/media-2/SHA256SUMS", "/run/media-2/SHA256SUMS.gpg",
            f"Checksum of http://127.0.0.1:8619/{verity} file did not check out"),
        "SHA256SUMS edited to match, old signature": (
            "/run/media-3/tamper/SHA256SUMS.flipped", "/run/media-2/SHA256SUMS.gpg", "gpg: BAD signature"),
        "SHA256SUMS signed by an untrusted key": (
            "/run/media-3/tamper/SHA256SUMS.flipped", "/run/media-3/tamper/SHA256SUMS.flipped.gpg-untrusted",
            "gpg: Can't check signature: No public key"),
    }
    for case, (sums, signature, reason) in cases.items():
        vm.succeed(f"ln -sf {sums} {SOURCE}/SHA256SUMS && ln -sf {signature} {SOURCE}/SHA256SUMS.gpg")
        out = vm.fail(f"{SYSUPDATE} update 2>&1", timeout=600)
        assert reason in out, f"{case}:\n{out}"
        assert _labels(vm) == labels, case
        assert _ukis(vm) == ukis, case
    vm.succeed(f"rm -rf {SOURCE}")


def test_update_to_release_2_keeps_data_and_release_1_as_fallback(vm: Machine, releases: dict[str, Release]) -> None:
    two = releases["2"]
    vm.succeed(f"echo written-under-1 > {MARKER}")
    use_medium(vm, two.label)
    vm.succeed(f"{SYSUPDATE} update", timeout=900)
    assert _labels(vm) == ["esp", f"{IMAGE_ID}_1_verity", f"{IMAGE_ID}_1", f"{IMAGE_ID}_2_verity",
                           f"{IMAGE_ID}_2", "weft-state"]
    assert _ukis(vm) == [f"{IMAGE_ID}_1.efi", f"{IMAGE_ID}_2+{TRIES}-0.efi"]
    vm.reboot(BOOT_S)
    assert running(vm) == ("2", two.uki.roothash)
    assert vm.succeed(f"cat {MARKER}").strip() == "written-under-1"
    # weft-boot-check passed, boot-complete.target was reached: systemd-bless-boot drops the counter.
    vm.wait_until_succeeds(f"test -e {ESP_UKIS}/{IMAGE_ID}_2.efi", timeout=600)
    assert _ukis(vm) == [f"{IMAGE_ID}_1.efi", f"{IMAGE_ID}_2.efi"]
    assert vm.succeed("systemctl is-active weft-boot-check.service").strip() == "active"


def test_a_release_that_fails_its_boot_check_rolls_back_by_itself(vm: Machine, releases: dict[str, Release]) -> None:
    two, three = releases["2"], releases["3"]
    use_medium(vm, three.label)
    vm.succeed(f"{SYSUPDATE} update", timeout=900)
    # Release 3 went into slot A (release 1's, not running); release 1's UKI made room (2 kept).
    assert _labels(vm) == ["esp", f"{IMAGE_ID}_3_verity", f"{IMAGE_ID}_3", f"{IMAGE_ID}_2_verity",
                           f"{IMAGE_ID}_2", "weft-state"]
    assert _ukis(vm) == [f"{IMAGE_ID}_2.efi", f"{IMAGE_ID}_3+{TRIES}-0.efi"]
    mark = vm.reboot(BOOT_S, shell=False)
    # No input from here on: release 3 boots, fails its check, reboots; after TRIES boots
    # systemd-boot starts release 2 again.
    boots = vm.wait_for_boots(lambda roothashes: roothashes[-1:] == [two.uki.roothash], since=mark,
                              timeout=BOOT_S * (TRIES + 1))
    assert boots == [three.uki.roothash] * TRIES + [two.uki.roothash], boots
    vm.wait_for_shell(BOOT_S)
    assert running(vm) == ("2", two.uki.roothash)
    assert _ukis(vm) == [f"{IMAGE_ID}_2.efi", f"{IMAGE_ID}_3+0-{TRIES}.efi"]
    assert vm.succeed(f"cat {MARKER}").strip() == "written-under-1"
    # Each of release 3's boots failed the check, which said so on the console and rebooted.
    failures = re.findall(r"boot check failed: not healthy: weft-appd\.service", vm.serial_text(since=mark))
    assert len(failures) == TRIES, failures


def test_secure_boot_refuses_a_uki_whose_command_line_was_edited(vm: Machine, releases: dict[str, Release]) -> None:
    edited = f"{IMAGE_ID}_{EDITED_VERSION}.efi"
    # The newest version on the ESP is what systemd-boot starts.
    vm.succeed(f"mkdir -p /run/media-3 && mount -o ro /dev/disk/by-label/{releases['3'].label} /run/media-3 && "
               f"cp /run/media-3/tamper/{edited} {ESP_UKIS}/{edited}")
    mark = vm.reboot(BOOT_S, shell=False)
    vm.wait_for_console(r"Security Violation|Access Denied", timeout=BOOT_S, since=mark)
    # Whatever the firmware and boot loader do next, no kernel starts with the edited command line.
    time.sleep(60)
    assert releases["3"].uki.roothash not in vm.boots_since(mark)
