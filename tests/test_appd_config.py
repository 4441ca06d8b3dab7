"""appd's configuration from the environment: systemd scope wrapping and clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from weft.daemons.appd.config import AppdConfig
from weft.errors import WeftError


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"XDG_RUNTIME_DIR": str(tmp_path), "HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin", **extra}


def test_runtimes_go_into_a_user_scope_only_when_a_user_manager_runs(tmp_path):
    assert AppdConfig.from_env(_env(tmp_path)).scope_command == ()
    (tmp_path / "systemd").mkdir()
    (tmp_path / "systemd/private").touch()
    scope = AppdConfig.from_env(_env(tmp_path)).scope_command
    assert scope[0].endswith("systemd-run")
    assert scope[1:4] == ("--user", "--scope", "--quiet")
    assert "--wait" not in scope  # systemd-run refuses --wait with --scope
    assert scope[-1] == "--" and "MemoryMax=512M" in scope and "CPUQuota=200%" in scope
    assert AppdConfig.from_env(_env(tmp_path, WEFT_DISABLE_CGROUP="")).scope_command == ()


def test_defaults_and_overrides(tmp_path):
    config = AppdConfig.from_env(_env(tmp_path))
    assert config.socket_path == tmp_path / "weft/appd.sock"
    assert config.ws_port == 7410
    assert config.runtime_command[-2:] == ("-m", "weft.daemons.runtime")
    config = AppdConfig.from_env(_env(tmp_path, WEFT_APPD_WS_PORT="0", WEFT_RUNTIME_BIN="/opt/rt --flag",
                                      WEFT_APPD_ORIGINS="weft-system://a weft-system://b"))
    assert config.ws_port == 0
    assert config.runtime_command == ("/opt/rt", "--flag")
    assert config.control_origins == {"weft-system://a", "weft-system://b"}


@pytest.mark.parametrize("extra, message", [
    ({"WEFT_APPD_WS_PORT": "many"}, "WEFT_APPD_WS_PORT must be an integer"),
    ({"WEFT_RUNTIME_POOL": "x"}, "WEFT_RUNTIME_POOL must be an integer"),
    ({"WEFT_APPD_WS_PORT": "70000"}, "invalid appd setting ws_port"),
    ({"WEFT_READY_TIMEOUT_S": "soon"}, "WEFT_READY_TIMEOUT_S must be a number"),
    ({"WEFT_READY_TIMEOUT_S": "-1"}, "invalid appd setting ready_timeout_s"),
])
def test_bad_values_are_clear_errors(tmp_path, extra, message):
    with pytest.raises(WeftError, match=message):
        AppdConfig.from_env(_env(tmp_path, **extra))


def test_runtime_dir_is_required():
    with pytest.raises(WeftError, match="XDG_RUNTIME_DIR is not set"):
        AppdConfig.from_env({"HOME": "/nonexistent"})
