"""Issue 7 defect 13 for weft-pack: nothing a package says reaches the terminal as a control sequence.

`weft-pack info/list` printed manifest names raw, so an OSC 52 sequence in a name wrote the
clipboard of whoever listed their apps. Human output is escaped (weft.terminal); `--json`
stays JSON, whose own escaping already keeps controls out.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from package_support import write_package

PACK = [sys.executable, "-m", "weft.pack.cli"]
OSC52 = "\x1b]52;c;ZXZpbA==\x07"
TOML_OSC52 = "\\u001b]52;c;ZXZpbA==\\u0007"  # the same, as a TOML basic-string escape


def _controls(text: str) -> list[str]:
    """Control characters other than the newlines that end output lines."""
    return [c for c in text if c != "\n" and (ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF)]


def _pack(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PACK, *argv], capture_output=True, text=True, errors="surrogateescape",
                          env={**os.environ, **env}, cwd="/")


def _hostile_package(directory: Path) -> Path:
    package = write_package(directory / "com.example.evil", app_id="com.example.evil")
    manifest = (package / "wapp.toml").read_text()
    manifest = manifest.replace('name = "Notes"', f'name = "Ev{TOML_OSC52}il\\u009b2J"')
    manifest = manifest.replace('description = "A sample app"',
                                f'description = "line\\nforged: OK{TOML_OSC52}"\nauthor = "\\u001b[31mred"')
    (package / "wapp.toml").write_text(manifest)
    return package


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"HOME": str(tmp_path / "home"), "WEFT_APP_STORE": str(tmp_path / "store"),
            "WEFT_APP_DATA": str(tmp_path / "data"), "WEFT_IMAGE_STORE": str(tmp_path / "images"),
            "WEFT_SYSTEM_APP_STORE": str(tmp_path / "system-apps"),
            "WEFT_SYSTEM_IMAGE_STORE": str(tmp_path / "system-images")}


def test_info_escapes_manifest_text(tmp_path: Path, env: dict[str, str]) -> None:
    proc = _pack("info", str(_hostile_package(tmp_path)), env=env)
    assert proc.returncode == 0, proc.stderr
    assert _controls(proc.stdout) == []
    assert "name:    Ev\\x1b]52;c;ZXZpbA==\\x07il\\u009b2J" in proc.stdout.splitlines()
    assert "desc:    line\\x0aforged: OK\\x1b]52;c;ZXZpbA==\\x07" in proc.stdout.splitlines()  # still one line
    assert "author:  \\x1b[31mred" in proc.stdout.splitlines()


def test_list_escapes_manifest_text(tmp_path: Path, env: dict[str, str]) -> None:
    assert _pack("install", str(_hostile_package(tmp_path)), env=env).returncode == 0
    proc = _pack("list", env=env)
    assert proc.returncode == 0, proc.stderr
    assert _controls(proc.stdout) == []
    assert proc.stdout.splitlines() == [
        "com.example.evil  Ev\\x1b]52;c;ZXZpbA==\\x07il\\u009b2J  1.0.0  directory (user)"]


@pytest.mark.parametrize("command", ["info", "list"])
def test_json_output_stays_json_and_carries_no_raw_controls(command: str, tmp_path: Path,
                                                            env: dict[str, str]) -> None:
    package = _hostile_package(tmp_path)
    assert _pack("install", str(package), env=env).returncode == 0
    proc = _pack(command, "--json", *([str(package)] if command == "info" else []), env=env)
    assert proc.returncode == 0, proc.stderr
    assert _controls(proc.stdout) == []  # json.dumps escapes them (\u001b)
    data = json.loads(proc.stdout)
    entry = data if command == "info" else data[0]
    assert entry["name"] == f"Ev{OSC52}il\x9b2J"  # the value itself is exact


def test_error_messages_quoting_a_manifest_are_escaped(tmp_path: Path, env: dict[str, str]) -> None:
    package = write_package(tmp_path / "pkg")
    manifest = (package / "wapp.toml").read_text().replace('id = "com.example.notes"', f'id = "x{TOML_OSC52}"')
    (package / "wapp.toml").write_text(manifest)
    for command in ("check", "info", "install"):
        proc = _pack(command, str(package), env=env)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert _controls(proc.stderr) == [], (command, proc.stderr)
        assert "package.id 'x\\x1b]52;c;ZXZpbA==\\x07' does not match" in proc.stderr


def test_skipped_store_entries_are_escaped_in_warnings(tmp_path: Path, env: dict[str, str]) -> None:
    store = Path(env["WEFT_APP_STORE"])
    store.mkdir(parents=True)
    os.mkdir(os.fsencode(store) + b"/\xff\x1b]52;c;ZXZpbA==\x07")  # not UTF-8 and not an app id
    write_package(store / "com.example.renamed", app_id="com.example.other", name=f"N{TOML_OSC52}")
    proc = _pack("list", env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert _controls(proc.stderr) == [] and _controls(proc.stdout) == []
    assert "\\udcff\\x1b]52;c;ZXZpbA==\\x07: not named by a valid app id" in proc.stderr
