"""The linter and the type checker as tests (as mkosi's tests/test_linters.py does).

Settings live in pyproject.toml: ruff's rule sets, and mypy's strict checks for `weft.*` with a
laxer default for tests/ and ci/ (pytest fixtures arrive by name and may stay unannotated).
A failure prints the tool's own report.
"""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(tool: str, args: Sequence[str]) -> None:
    result = subprocess.run([sys.executable, "-m", tool, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    if result.returncode != 0:
        pytest.fail(f"{tool} {' '.join(args)}\n{result.stdout}{result.stderr}", pytrace=False)


def _python_files(folder: str) -> list[str]:
    return sorted(str(p.relative_to(REPO)) for p in (REPO / folder).glob("*.py"))


def test_ruff() -> None:
    _run("ruff", ["check", "--no-cache", "weft", "tests", "ci", "examples"])


def test_mypy_weft() -> None:
    _run("mypy", ["weft"])


def test_mypy_tests_and_ci() -> None:
    # Only the test and ci files' own errors: weft's are test_mypy_weft's. tests/ and ci/ are
    # top-level modules for mypy; tests/vm has a conftest of its own, so it is checked apart.
    _run("mypy", ["--follow-imports=silent", *_python_files("tests"), *_python_files("ci")])


def test_mypy_vm_tests() -> None:
    _run("mypy", ["--follow-imports=silent", *_python_files("tests/vm")])
