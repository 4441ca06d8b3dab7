"""appd's configuration from the environment: defaults, overrides, and bad settings that stop
appd at start with a clear error instead of failing every launch later."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from weft.daemons.appd.config import AppdConfig
from weft.errors import WeftError
from weft.settings import SettingError


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"XDG_RUNTIME_DIR": str(tmp_path), "HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", **extra}


def test_defaults_and_overrides(tmp_path: Path) -> None:
    config = AppdConfig.from_env(_env(tmp_path))
    assert config.socket_path == tmp_path / "weft/appd.sock"
    assert config.ws_port == 7410
    assert config.runtime_command[-2:] == ("-m", "weft.daemons.runtime")
    assert config.cgroups == "off"
    assert (config.memory_mib, config.app_limits.memory_mib, config.app_limits.cpu_percent) == (256, 512, 200)
    config = AppdConfig.from_env(_env(tmp_path, WEFT_APPD_WS_PORT="0", WEFT_RUNTIME_BIN="/opt/rt --flag",
                                      WEFT_APPD_ORIGINS="weft-system://a weft-system://b",
                                      WEFT_APPD_SOCKET=str(tmp_path / "s.sock"), WEFT_APP_CGROUPS="required",
                                      WEFT_APP_CGROUP_MEMORY_MIB="1024", WEFT_APP_CPU_PERCENT="50",
                                      WEFT_APP_PIDS_MAX="64"))
    assert config.ws_port == 0
    assert config.runtime_command == ("/opt/rt", "--flag")
    assert config.control_origins == {"weft-system://a", "weft-system://b"}
    assert config.socket_path == tmp_path / "s.sock"
    assert config.cgroups == "required"
    assert (config.app_limits.memory_mib, config.app_limits.cpu_percent, config.app_limits.pids_max) == (1024, 50, 64)


@pytest.mark.parametrize("extra, message", [
    ({"WEFT_APPD_WS_PORT": "many"}, "WEFT_APPD_WS_PORT='many': input should be a valid integer"),
    ({"WEFT_RUNTIME_POOL": "x"}, "WEFT_RUNTIME_POOL='x': input should be a valid integer"),
    ({"WEFT_APPD_WS_PORT": "70000"}, "WEFT_APPD_WS_PORT='70000': input should be less than or equal to 65535"),
    ({"WEFT_READY_TIMEOUT_S": "soon"}, "WEFT_READY_TIMEOUT_S='soon': input should be a valid number"),
    ({"WEFT_READY_TIMEOUT_S": "-1"}, "WEFT_READY_TIMEOUT_S='-1': input should be greater than 0"),
    ({"WEFT_READY_TIMEOUT_S": "nan"}, "WEFT_READY_TIMEOUT_S='nan': input should be a finite number"),
    ({"WEFT_APP_MEMORY_MIB": "100000"}, "WEFT_APP_MEMORY_MIB='100000': input should be less than or equal to 65536"),
    ({"WEFT_APP_CGROUPS": "auto"}, "WEFT_APP_CGROUPS='auto': input should be 'required' or 'off'"),
    ({"WEFT_APP_CPU_PERCENT": "0"}, "WEFT_APP_CPU_PERCENT='0': input should be greater than or equal to 1"),
    ({"WEFT_RUNTIME_BIN": "'unclosed"}, "WEFT_RUNTIME_BIN=\"'unclosed\": no closing quotation"),
    ({"WEFT_APP_CGROUPS": "required", "WEFT_APP_MEMORY_MIB": "512"},
     "WEFT_APP_CGROUP_MEMORY_MIB=512 must be larger than WEFT_APP_MEMORY_MIB=512"),
])
def test_bad_values_are_clear_errors(tmp_path: Path, extra: dict[str, str], message: str) -> None:
    with pytest.raises(SettingError) as caught:
        AppdConfig.from_env(_env(tmp_path, **extra))
    assert str(caught.value).startswith(message)


def test_runtime_dir_is_required() -> None:
    with pytest.raises(WeftError, match="XDG_RUNTIME_DIR is not set"):
        AppdConfig.from_env({"HOME": "/nonexistent"})


def test_out_of_range_memory_stops_appd_at_start(tmp_path: Path) -> None:
    """It used to start and then fail every launch (the relay model had the tighter bound)."""
    env = _env(tmp_path, WEFT_APP_MEMORY_MIB="100000", WEFT_APPD_WS_PORT="0", WEFT_RUNTIME_POOL="0")
    result = subprocess.run([sys.executable, "-m", "weft.daemons.appd"], env=env, check=False, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr == ("error: WEFT_APP_MEMORY_MIB='100000': input should be less than or equal to 65536\n")
    assert not (tmp_path / "weft/appd.sock").exists()
