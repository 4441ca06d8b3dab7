"""appd's configuration: read from the environment once, at start-up, and passed down.

Every value comes from `weft.settings` (one definition each: variable, bounds, default).
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from weft import settings
from weft.settings import (
    AppSourceMode,
    CgroupMemoryMib,
    CgroupMode,
    CpuPercent,
    MemoryMib,
    PidsMax,
    PoolSize,
    Seconds,
    SessionCap,
    TcpPort,
)
from weft.store import StorePaths


class AppLimits(BaseModel):
    """What each app's cgroup gets (memory.max, cpu.max, pids.max)."""

    model_config = ConfigDict(frozen=True)
    memory_mib: CgroupMemoryMib
    cpu_percent: CpuPercent
    pids_max: PidsMax


class AppdConfig(BaseModel):
    model_config = ConfigDict(frozen=True)
    runtime_dir: Path  # $XDG_RUNTIME_DIR/weft: sockets, token, wsport, last-session.json
    socket_path: Path
    ws_port: TcpPort
    control_origins: frozenset[str]  # browser origins allowed to use the boot token
    runtime_command: tuple[str, ...]
    pool_size: PoolSize
    ready_timeout_s: Seconds
    stop_grace_s: Seconds = 3.0
    memory_mib: MemoryMib  # the guest's cap, enforced by the runtime
    max_sessions: SessionCap  # live sessions; each is a process with its own memory
    cgroups: CgroupMode
    app_limits: AppLimits
    store: StorePaths
    app_source: AppSourceMode  # where packages come from (app_source.py); no fallback between the two
    mountd_socket: Path
    apps_mount_root: Path  # weft-mountd's mounts: `<root>/<app_id>`, the only paths a verified launch accepts
    compositor_socket: Path | None = None  # weft-compositor's IPC socket; None: no desktop (headless launches)

    @model_validator(mode="after")
    def _cgroup_leaves_room_for_the_runtime(self) -> AppdConfig:
        if self.cgroups == "required" and self.app_limits.memory_mib <= self.memory_mib:
            raise ValueError(
                f"{settings.APP_CGROUP_MEMORY_MIB.env}={self.app_limits.memory_mib} must be larger than "
                f"{settings.APP_MEMORY_MIB.env}={self.memory_mib}: the runtime process needs memory beyond "
                "its guest's, or the OOM killer ends the app before the guest's own cap does")
        return self

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
    def from_env(cls, env: Mapping[str, str] | None = None) -> AppdConfig:
        """Raises SettingError (`error: NAME='value': why`) for any bad setting."""
        try:
            return cls(
                runtime_dir=settings.appd_runtime_dir(env),
                socket_path=settings.appd_socket(env),
                ws_port=settings.APPD_WS_PORT.read(env),
                control_origins=settings.APPD_ORIGINS.read(env),
                runtime_command=settings.RUNTIME_BIN.read(env) or (sys.executable, "-m", "weft.daemons.runtime"),
                pool_size=settings.RUNTIME_POOL.read(env),
                ready_timeout_s=settings.READY_TIMEOUT_S.read(env),
                memory_mib=settings.APP_MEMORY_MIB.read(env),
                max_sessions=settings.MAX_SESSIONS.read(env),
                cgroups=settings.APP_CGROUPS.read(env),
                app_limits=AppLimits(memory_mib=settings.APP_CGROUP_MEMORY_MIB.read(env),
                                     cpu_percent=settings.APP_CPU_PERCENT.read(env),
                                     pids_max=settings.APP_PIDS_MAX.read(env)),
                store=StorePaths.from_env(env),
                app_source=settings.APP_SOURCE.read(env),
                mountd_socket=settings.MOUNTD_SOCKET.read(env),
                apps_mount_root=settings.APPS_MOUNT_ROOT.read(env),
                compositor_socket=settings.COMPOSITOR_SOCKET.read(env),
            )
        except ValidationError as exc:  # a rule across settings (each one alone was valid)
            raise settings.SettingError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
