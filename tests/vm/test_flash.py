"""`weft image flash`: refusals, and a real write + read-back verify on a loop device."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from weft.image.gpt import read_partitions


def _flash(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "weft.cli", "image", "flash", *args],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)


@pytest.fixture
def loop_device(tmp_path: Path, test_image: Path) -> Iterator[Path]:
    backing = tmp_path / "disk.img"
    with open(backing, "wb") as fh:
        fh.truncate(test_image.stat().st_size + (64 << 20))
    device = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True,
                            text=True, check=True).stdout.strip()
    yield Path(device)
    subprocess.run(["losetup", "--detach", device], check=True)


def test_refuses_a_regular_file(test_image: Path, tmp_path: Path) -> None:
    target = tmp_path / "not-a-disk"
    target.write_bytes(b"")
    proc = _flash(str(test_image), str(target), "--yes")
    assert proc.returncode == 2
    assert "is not a block device" in proc.stderr
    assert target.read_bytes() == b""


def test_refuses_the_disk_the_system_runs_from(test_image: Path) -> None:
    dev = os.stat("/").st_dev
    name = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}").resolve()
    disk = name.parent.name if (name / "partition").exists() else name.name
    proc = _flash(str(test_image), f"/dev/{disk}", "--yes")
    assert proc.returncode != 0
    assert "refusing to write" in proc.stderr


def test_asks_for_confirmation_without_yes(test_image: Path, loop_device: Path) -> None:
    proc = _flash(str(test_image), str(loop_device))
    assert proc.returncode == 2
    assert "pass --yes" in proc.stderr
    assert loop_device.read_bytes()[:4096] == bytes(4096)  # nothing written


def test_writes_and_verifies(test_image: Path, loop_device: Path) -> None:
    proc = _flash(str(test_image), str(loop_device), "--yes")
    assert proc.returncode == 0, proc.stderr
    assert "verified" in proc.stderr
    assert read_partitions(loop_device) == read_partitions(test_image)
