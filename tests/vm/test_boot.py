"""The booted test image: clean boot, verified read-only root, baked keys."""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from weft.vm.machine import Machine


def test_reaches_multi_user_with_no_failed_units(machine: Machine) -> None:
    machine.wait_for_unit("multi-user.target")
    assert machine.succeed("systemctl list-units --failed --no-legend --plain") == ""
    assert machine.succeed("systemctl is-system-running --wait").strip() == "running"


def test_root_is_erofs_on_dm_verity_and_read_only(machine: Machine) -> None:
    mount = json.loads(machine.succeed("findmnt --json --output SOURCE,FSTYPE,OPTIONS /"))
    root = mount["filesystems"][0]
    assert root["source"] == "/dev/mapper/root"
    assert root["fstype"] == "erofs"
    assert "ro" in root["options"].split(",")
    table = machine.succeed("dmsetup table root").split()
    assert table[2] == "verity", table
    # The root hash the kernel checks against is the one on the UKI's command line.
    cmdline = machine.succeed("cat /proc/cmdline")
    root_hash = table[table.index("sha256") + 1]
    assert f"roothash={root_hash}" in cmdline
    output = machine.fail("touch /usr/weft-write-test")
    assert "Read-only file system" in output


def test_secure_boot_is_on_with_the_image_key_enrolled_and_the_kernel_locked_down(machine: Machine) -> None:
    # The VM's firmware started in setup mode; systemd-boot enrolled the image's key on first boot.
    status = machine.succeed("bootctl status 2>/dev/null")
    assert "Secure Boot: enabled (user)" in status, status
    assert "[integrity]" in machine.succeed("cat /sys/kernel/security/lockdown") or \
        "[confidentiality]" in machine.succeed("cat /sys/kernel/security/lockdown")
    # What boots is this version's UKI, named the way systemd-sysupdate's transfer matches it.
    version = machine.succeed(". /usr/lib/os-release && echo ${IMAGE_ID}_${IMAGE_VERSION}").strip()
    assert machine.succeed("ls /boot/EFI/Linux").split() == [f"{version}.efi"]


def test_trusted_publisher_keys_are_on_the_verified_root(machine: Machine) -> None:
    keys = machine.succeed("ls /usr/share/weft/trusted-keys").split()
    # The test image trusts the key that signed its shipped apps (the committed test key), not
    # the builder's release key.
    assert "weft-test.pub" in keys and "weft-release.pub" not in keys
    assert machine.succeed("findmnt --noheadings --output SOURCE --target /usr/share/weft/trusted-keys"
                           ).strip() == "/dev/mapper/root"
    for key in keys:
        text = machine.succeed(f"cat /usr/share/weft/trusted-keys/{key}")
        assert len(bytes.fromhex(text.strip())) == 32


def test_shipped_apps_are_signed_images_on_the_verified_root(machine: Machine) -> None:
    images = machine.succeed("ls /usr/share/weft/images").split()
    assert images == ["org.weft.demo.counter.wapp", "org.weft.demo.notes.wapp"]
    assert machine.succeed("findmnt --noheadings --output SOURCE --target /usr/share/weft/images"
                           ).strip() == "/dev/mapper/root"
    for image in images:
        machine.succeed(f"weft-pack verify-image --trusted-keys /usr/share/weft/trusted-keys "
                        f"/usr/share/weft/images/{image}")
    # A shipped id cannot be installed over (no shadowing) nor uninstalled.
    listed = json.loads(machine.succeed("weft-pack list --json"))
    counter = next(entry for entry in listed if entry["id"] == "org.weft.demo.counter")
    assert (counter["version"], counter["kind"], counter["store"]) == ("0.1.0", "image", "system")
    shipped = "/usr/share/weft/images/org.weft.demo.counter.wapp"
    assert "ships with the OS" in machine.fail(f"weft-pack install {shipped} 2>&1")
    assert "ships with the OS" in machine.fail("weft-pack uninstall org.weft.demo.counter 2>&1")


def test_weft_user_exists_with_home_on_the_state_partition(machine: Machine) -> None:
    fields = machine.succeed("getent passwd weft").strip().split(":")
    assert fields[5] == "/var/lib/weft"
    assert machine.succeed("stat -c %U /var/lib/weft").strip() == "weft"


def _active_vt(machine: Machine) -> str:
    return machine.succeed("cat /sys/class/tty/tty0/active").strip()


def test_the_desktop_keeps_the_console_and_the_screen_is_1280x800(machine: Machine, artifacts: Path) -> None:
    # weft-compositor holds tty1 in graphics mode with the keyboard through libinput: Alt+F<n>
    # reaches the compositor, not the kernel's console switcher, so nobody lands on a text
    # console (WEFT has no password logins). Keys reaching the desktop: tests/vm/test_desktop.py.
    machine.wait_for_unit("weft-compositor.service")
    assert _active_vt(machine) == "tty1"
    machine.send_key("alt-f2")
    time.sleep(2)
    assert _active_vt(machine) == "tty1"
    png = machine.screenshot(artifacts / "display")
    width, height = struct.unpack(">II", png.read_bytes()[16:24])  # the IHDR chunk
    assert (width, height) == (1280, 800)


def test_tmp_is_a_writable_tmpfs(machine: Machine) -> None:
    assert machine.succeed("findmnt --noheadings --output FSTYPE /tmp").strip() == "tmpfs"
    machine.succeed("echo x > /tmp/weft-write-test && rm /tmp/weft-write-test")
