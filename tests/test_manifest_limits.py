"""Hostile manifests (issue 7 defect 11): deep nesting, long dotted keys, FIFOs give ManifestError, fast."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from weft.manifest import (
    MAX_KEY_PARTS,
    MAX_MANIFEST_BYTES,
    MAX_MANIFEST_NESTING,
    ManifestError,
    load_manifest,
    parse_manifest,
)

GOOD = """[package]
id = "com.example.notes"
name = "Notes"
version = "1.0.0"
capabilities = ["fs:rw:app-data"]
[runtime]
module = "app.wasm"
[ui]
entry = "ui/index.html"
"""

HOSTILE = {
    "nested arrays": "x = " + "[" * 5000 + "]" * 5000,
    "nested inline tables": "x = " + "{a=" * 1000 + "1" + "}" * 1000,
    "nested in a multi-line array": "x = [\n" + "[" * 5000 + "]" * 5000 + "\n]",
    "dotted key": "x." * 20000 + "y = 1",
    "dotted table header": "[" + "a." * 20000 + "b]",
    "dotted array-of-tables header": "[[" + "a." * 20000 + "b]]",
    "dotted key in an inline table": "x = {" + "a." * 20000 + "b = 1}",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_shape_is_a_manifest_error_quickly(name: str) -> None:
    start = time.monotonic()
    with pytest.raises(ManifestError, match=r"nested deeper than|dotted parts"):
        parse_manifest(GOOD + HOSTILE[name])
    assert time.monotonic() - start < 0.5  # tomllib took 5 s on the 40 KB dotted key


def test_limits_still_accept_what_they_name() -> None:
    deep = "[extra]\nx = " + "[" * MAX_MANIFEST_NESTING + "]" * MAX_MANIFEST_NESTING + "\n"
    dotted = ".".join(["a"] * MAX_KEY_PARTS) + " = 1\n"
    header = "[" + ".".join(["t"] * MAX_KEY_PARTS) + "]\n"
    assert parse_manifest(GOOD + deep + dotted + header).app_id == "com.example.notes"
    with pytest.raises(ManifestError):
        parse_manifest(GOOD + "[extra]\nx = " + "[" * (MAX_MANIFEST_NESTING + 1) + "]" * (MAX_MANIFEST_NESTING + 1))
    with pytest.raises(ManifestError):
        parse_manifest(GOOD + ".".join(["a"] * (MAX_KEY_PARTS + 1)) + " = 1\n")


@pytest.mark.parametrize("text", [
    '[extra]\ns = "' + "[" * 100 + '"\n',  # brackets inside strings do not count
    "[extra]\ns = '" + "{" * 100 + "'\n",
    '[extra]\ns = """\n' + "[" * 100 + '\n"""\n',
    "[extra]\ns = '''" + "[" * 100 + "'''\n",
    '[extra]\ns = "a\\"' + "[" * 100 + '"\n',  # an escaped quote does not end the string
    "[extra]\n# " + "[" * 100 + "\n",  # nor inside comments
    "[extra]\nfloats = [" + "1.5, " * 500 + "]\n",  # dots in values are not key parts
    '[extra]\n"' + "a." * 100 + '" = 1\n',  # a quoted key is one part
    '[extra]\ns = """a""""\n',  # a closing """ may be followed by up to two quotes
])
def test_strings_comments_and_values_do_not_count(text: str) -> None:
    assert parse_manifest(GOOD + text).app_id == "com.example.notes"


def test_text_over_the_size_bound_is_refused() -> None:
    with pytest.raises(ManifestError, match="larger than"):
        parse_manifest(GOOD + "#" * MAX_MANIFEST_BYTES)


def test_fifo_manifest_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "wapp.toml")
    with pytest.raises(ManifestError, match="not a regular file"):
        load_manifest(tmp_path)


PACK = [sys.executable, "-m", "weft.pack.cli"]


@pytest.mark.parametrize("command", ["check", "info", "install"])
def test_nested_manifest_is_an_error_line_in_every_command(command: str, make_package: Callable[..., Path],
                                                           store_env: dict[str, str]) -> None:
    package = make_package()
    with open(package / "wapp.toml", "a") as fh:
        fh.write("[extra]\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    proc = subprocess.run([*PACK, command, str(package)], capture_output=True, text=True,
                          env={**os.environ, **store_env})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "error: wapp.toml: arrays or tables nested deeper than" in proc.stderr
