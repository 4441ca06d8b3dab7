"""appd's configuration: read from the environment once, at start-up, and passed down."""
from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from weft.errors import WeftError
from weft.store import StorePaths

DEFAULT_WS_PORT = 7410
SCOPE_PROPERTIES = ("CPUQuota=200%", "MemoryMax=512M")


class AppdConfig(BaseModel):
    model_config = ConfigDict(frozen=True)
    runtime_dir: Path  # $XDG_RUNTIME_DIR/weft: sockets, token, wsport, last-session.json
    socket_path: Path
    ws_port: int = Field(DEFAULT_WS_PORT, ge=0, lt=65536)
    control_origins: frozenset[str]  # browser origins allowed to use the boot token
    runtime_command: tuple[str, ...]
    scope_command: tuple[str, ...]  # `systemd-run --user --scope ...` prefix, or () without a user manager
    pool_size: int = Field(2, ge=0, le=16)
    ready_timeout_s: float = Field(30.0, gt=0)
    stop_grace_s: float = Field(3.0, gt=0)
    memory_mib: int = Field(256, ge=16)
    max_sessions: int = Field(64, ge=1)  # live sessions; each is a process with its own memory
    store: StorePaths

    @property
    def token_path(self) -> Path:
        return self.runtime_dir / "appd.token"

    @property
    def wsport_path(self) -> Path:
        return self.runtime_dir / "appd.wsport"

    @property
    def last_session_path(self) -> Path:
        return self.runtime_dir / "last-session.json"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "AppdConfig":
        if not env.get("XDG_RUNTIME_DIR"):
            raise WeftError("XDG_RUNTIME_DIR is not set; weft-appd keeps its sockets there")
        xdg_runtime = Path(env["XDG_RUNTIME_DIR"])
        runtime_dir = xdg_runtime / "weft"
        runtime_bin = env.get("WEFT_RUNTIME_BIN")
        values = dict(
            runtime_dir=runtime_dir,
            socket_path=Path(env.get("WEFT_APPD_SOCKET") or runtime_dir / "appd.sock"),
            ws_port=_int(env, "WEFT_APPD_WS_PORT", DEFAULT_WS_PORT),
            control_origins=frozenset(env.get("WEFT_APPD_ORIGINS", "weft-system://shell").split()),
            runtime_command=tuple(shlex.split(runtime_bin)) if runtime_bin else
            (sys.executable, "-m", "weft.daemons.runtime"),
            scope_command=_scope_command(env, xdg_runtime),
            pool_size=_int(env, "WEFT_RUNTIME_POOL", 2),
            ready_timeout_s=_number(env, "WEFT_READY_TIMEOUT_S", 30.0),
            memory_mib=_int(env, "WEFT_APP_MEMORY_MIB", 256),
            max_sessions=_int(env, "WEFT_MAX_SESSIONS", 64),
            store=StorePaths.from_env(env),
        )
        try:
            return cls(**values)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise WeftError(f"invalid appd setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(env.get(name, default))
    except ValueError:
        raise WeftError(f"{name} must be an integer, not {env[name]!r}") from None


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(env.get(name, default))
    except ValueError:
        raise WeftError(f"{name} must be a number, not {env[name]!r}") from None


def _scope_command(env: Mapping[str, str], xdg_runtime: Path) -> tuple[str, ...]:
    """Put runtimes in a transient user scope when a systemd user manager is running.

    `--scope` runs the command in the foreground of systemd-run, so there is no `--wait`
    (the reference passed both, which systemd-run rejects)."""
    systemd_run = shutil.which("systemd-run")
    if "WEFT_DISABLE_CGROUP" in env or systemd_run is None or not (xdg_runtime / "systemd/private").exists():
        return ()
    properties = [arg for prop in SCOPE_PROPERTIES for arg in ("-p", prop)]
    return (systemd_run, "--user", "--scope", "--quiet", "--collect", "--slice=weft-apps.slice", *properties, "--")
