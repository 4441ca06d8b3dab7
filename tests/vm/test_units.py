"""The units from units/ in the guest: each one whose program the weft package declares
(pyproject.toml [project.scripts]) is installed, enabled and active; the others are left
out of the image by the build (their program does not exist yet)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from weft.vm.machine import Machine

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"])
UNITS = sorted(p for p in (REPO / "units").iterdir() if p.suffix in (".service", ".socket", ".timer"))


def _program(unit: Path) -> str | None:
    match = re.search(r"^ExecStart=[-@+!]*(\S+)", unit.read_text(), re.M)
    return match.group(1) if match else None


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_state_in_guest(machine: Machine, unit: Path) -> None:
    program = _program(unit)
    if program is None or Path(program).name in SCRIPTS:
        if unit.suffix == ".service" and unit.with_suffix(".socket").exists():
            # Socket-activated (weft-mountd): its socket is enabled; it starts on the first connection.
            assert machine.succeed(f"systemctl is-enabled {unit.name}").strip() == "static"
        else:
            assert machine.succeed(f"systemctl is-enabled {unit.name}").strip() == "enabled"
            machine.wait_for_unit(unit.name, timeout=300)
        exposure = machine.succeed(f"systemd-analyze security --no-pager {unit.name} | tail -1")
        print(f"{unit.name}: {exposure.strip()}")
    else:
        machine.fail(f"systemctl cat {unit.name}")
