"""The weft package baked into the image runs in the guest: every console script it declares."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from weft.vm.machine import Machine

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
# `weft` itself builds and boots images: a host tool, not run inside the guest.
HOST_ONLY = {"weft"}
GUEST_TOOLS = sorted(set(tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]) - HOST_ONLY)


@pytest.mark.parametrize("tool", GUEST_TOOLS)
def test_console_script_runs_in_guest(machine: Machine, tool: str) -> None:
    output = machine.succeed(f"{tool} --help")
    assert "usage" in output.lower()
    assert machine.succeed(f"readlink -f /usr/bin/{tool}").strip() == f"/usr/lib/weft/venv/bin/{tool}"


def test_guest_python_uses_the_baked_venv_offline(machine: Machine) -> None:
    output = machine.succeed("/usr/lib/weft/venv/bin/python -c "
                             "'import weft, pydantic, nacl, wasmtime; print(weft.__file__)'")
    assert output.strip().startswith("/usr/lib/weft/venv/lib/python3.11/site-packages/weft/")
