"""weft.settings is the one definition of every setting: the programs that carry a value agree
on its bounds because they share the type, and nothing else reads those variables."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import get_type_hints

import pytest
from pydantic import ValidationError

from weft import settings
from weft.daemons.appd.config import AppdConfig, AppLimits
from weft.daemons.relay import Launch
from weft.daemons.runtime.session import SessionSettings

REPO = Path(__file__).resolve().parent.parent


def test_memory_bounds_are_one_object_everywhere() -> None:
    for model in (AppdConfig, Launch, SessionSettings):
        assert get_type_hints(model, include_extras=True)["memory_mib"] is settings.MemoryMib, model
    assert settings.APP_MEMORY_MIB.type is settings.MemoryMib
    assert get_type_hints(AppLimits, include_extras=True)["memory_mib"] is settings.CgroupMemoryMib


def _runtime_cli_accepts(value: int) -> bool:
    # --compile-only of a missing app: argument checks pass, then it fails on the store (exit 1);
    # a refused --memory-mib is a usage error (exit 2).
    result = subprocess.run([sys.executable, "-m", "weft.daemons.runtime", "--compile-only", "org.example.none",
                             "--memory-mib", str(value)], check=False, capture_output=True, text=True, timeout=60,
                            env={"HOME": "/nonexistent", "WEFT_APP_STORE": "/nonexistent", "PATH": "/usr/bin:/bin"})
    assert result.returncode in (1, 2), result.stderr
    return result.returncode == 1


@pytest.mark.parametrize("value", [15, 16, 65536, 65537])
def test_appd_relay_and_runtime_cli_agree_on_memory_bounds(value: int) -> None:
    try:
        settings.APP_MEMORY_MIB.read({"WEFT_APP_MEMORY_MIB": str(value)})
        appd_accepts = True
    except settings.SettingError:
        appd_accepts = False
    try:
        Launch(app_id="org.example.app", session_id=1, memory_mib=value, package_root=Path("/run/weft/apps/x"),
               publisher="unsigned")
        relay_accepts = True
    except ValidationError:
        relay_accepts = False
    assert appd_accepts == relay_accepts == _runtime_cli_accepts(value) == (16 <= value <= 65536)


def test_runtime_cli_names_the_bad_option() -> None:
    result = subprocess.run([sys.executable, "-m", "weft.daemons.runtime", "--compile-only", "org.example.none",
                             "--memory-mib", "100000"], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.endswith("error: --memory-mib='100000': input should be less than or equal to 65536\n")


def test_unset_and_empty_give_the_default() -> None:
    assert settings.APP_MEMORY_MIB.read({}) == 256
    assert settings.APP_MEMORY_MIB.read({"WEFT_APP_MEMORY_MIB": ""}) == 256
    assert settings.APPD_ORIGINS.read({"WEFT_APPD_ORIGINS": " a  b "}) == {"a", "b"}
    assert settings.DEBUG.read({"WEFT_DEBUG": "1"}) is True and settings.DEBUG.read({}) is False


def test_derived_paths() -> None:
    assert settings.cache_dir({"HOME": "/h"}) == Path("/h/.cache/weft")
    assert settings.cache_dir({"HOME": "/h", "XDG_CACHE_HOME": "/c"}) == Path("/c/weft")
    assert settings.cache_dir({"HOME": "/h", "WEFT_CACHE_DIR": "/w"}) == Path("/w")
    assert settings.cache_dir({}) == Path("/var/cache/weft")
    assert settings.data_home({"HOME": "/h"}) == Path("/h/.local/share")
    assert settings.appd_socket({"XDG_RUNTIME_DIR": "/r"}) == Path("/r/weft/appd.sock")
    assert settings.appd_socket({"WEFT_APPD_SOCKET": "/s.sock"}) == Path("/s.sock")
    with pytest.raises(settings.SettingError, match="XDG_RUNTIME_DIR is not set"):
        settings.appd_socket({})


def _variable_reads(path: Path) -> list[tuple[int, str]]:
    """`env["X"]`, `env.get("X")`, `os.getenv("X")`, `"X" in env`: where a module reads variable X."""
    reads = []
    for node in ast.walk(ast.parse(path.read_text())):
        key: ast.expr | None = None
        if isinstance(node, ast.Subscript):
            key = node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args \
                and node.func.attr in ("get", "getenv", "pop", "setdefault"):
            key = node.args[0]
        elif isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn)):
            key = node.left
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            reads.append((key.lineno, key.value))
    return reads


def test_each_variable_is_read_only_in_weft_settings() -> None:
    names = {setting.env for setting in settings.ALL}
    offenders = []
    for path in sorted((REPO / "weft").rglob("*.py")):
        if path == REPO / "weft/settings.py":
            continue
        for line, key in _variable_reads(path):
            if key in names or re.fullmatch(r"(WEFT|XDG)_[A-Z_]+", key):
                offenders.append(f"{path.relative_to(REPO)}:{line}: {key}")
    assert offenders == []


def test_the_reads_check_finds_reads(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('import os\nos.environ.get("WEFT_X")\nenv["HOME"]\n"XDG_Y" in env\nos.getenv("WEFT_Z")\n')
    assert _variable_reads(sample) == [(2, "WEFT_X"), (3, "HOME"), (4, "XDG_Y"), (5, "WEFT_Z")]


def test_docs_settings_table_is_generated_from_the_definitions() -> None:
    assert settings.markdown_table() in (REPO / "docs/platform.md").read_text()
