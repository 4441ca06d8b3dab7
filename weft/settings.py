"""Every setting a WEFT program reads from its environment: one typed definition each.

A setting has one environment variable, one type that carries its bounds, one default and
one line of documentation, and every program reads it through this module — so appd, the
relay model and the runtime's command line can never disagree about a bound again (they
did: `WEFT_APP_MEMORY_MIB=100000` started appd, then every launch failed). Programs read
their settings once, at start-up, and pass the values down; a bad value stops the program
there with `error: NAME='value': why`. `markdown_table()` is the table in docs/platform.md.

Paths derived from several settings (the appd socket, the weft cache directory, ...) are
functions here as well, so each is derived in one place.
"""
from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import Field, TypeAdapter, ValidationError

from weft.errors import WeftError

T = TypeVar("T")
Env = Mapping[str, str]

# -- types with their bounds (used by every model that carries such a value) ------------------

#: Memory cap of one app's guest (Wasm memories and tables), MiB.
MemoryMib = Annotated[int, Field(ge=16, le=65536)]
#: memory.max of one app's cgroup (the whole runtime process: Python, wasmtime, code, guest), MiB.
CgroupMemoryMib = Annotated[int, Field(ge=64, le=1 << 20)]
#: cpu.max of one app's cgroup, in percent of one CPU (200 = two CPUs' worth).
CpuPercent = Annotated[int, Field(ge=1, le=25600)]
#: pids.max of one app's cgroup: processes and threads of the runtime and its helpers.
PidsMax = Annotated[int, Field(ge=16, le=65536)]
TcpPort = Annotated[int, Field(ge=0, le=65535)]
PoolSize = Annotated[int, Field(ge=0, le=16)]
SessionCap = Annotated[int, Field(ge=1, le=4096)]
Seconds = Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)]
#: `required`: every runtime runs in its own cgroup below appd's delegated one, or appd does
#: not start; `off`: no cgroups (developer hosts without delegation).
CgroupMode = Literal["required", "off"]
#: `verified`: appd launches apps only from signed images that weft-mountd mounted; `directory`:
#: from package directories in the stores (developer hosts without device-mapper). Never both.
AppSourceMode = Literal["verified", "directory"]


class SettingError(WeftError):
    pass


@dataclass(frozen=True)
class Setting(Generic[T]):
    env: str
    type: Any  # anything pydantic validates: the Annotated types above, Path, Literal[...]
    default: T
    doc: str
    split: Callable[[str], object] | None = None  # text -> the value to validate (lists, commands)

    def parse(self, raw: str, source: str | None = None) -> T:
        """`raw` as this setting's type; `source` names where it came from (default: the variable)."""
        try:
            value: T = TypeAdapter(self.type).validate_python(self.split(raw) if self.split else raw)
        except (ValidationError, ValueError) as exc:
            reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            raise SettingError(f"{source or self.env}={raw!r}: {reason[:1].lower()}{reason[1:]}") from None
        return value

    def read(self, env: Env | None = None) -> T:
        """The value in `env` (default: this process's environment); unset or empty gives the default."""
        raw = (os.environ if env is None else env).get(self.env, "")
        return self.parse(raw) if raw else self.default


def _words(text: str) -> list[str]:
    return text.split()


def _flag(text: str) -> bool:
    return text == "1"


# -- locations -----------------------------------------------------------------------------

HOME: Setting[Path | None] = Setting(
    "HOME", Path | None, None, "home directory; app stores, data and caches default below it")
XDG_RUNTIME_DIR: Setting[Path | None] = Setting(
    "XDG_RUNTIME_DIR", Path | None, None, "per-boot directory; weft-appd's socket, token and state live in its weft/")
XDG_DATA_HOME: Setting[Path | None] = Setting("XDG_DATA_HOME", Path | None, None, "default $HOME/.local/share")
XDG_CACHE_HOME: Setting[Path | None] = Setting("XDG_CACHE_HOME", Path | None, None, "default $HOME/.cache")
APP_STORE: Setting[Path | None] = Setting(
    "WEFT_APP_STORE", Path | None, None,
    "the user's package store (default $XDG_DATA_HOME/weft/apps); the system store is looked at first")
SYSTEM_APP_STORE: Setting[Path] = Setting(
    "WEFT_SYSTEM_APP_STORE", Path, Path("/usr/share/weft/apps"),
    "package directories shipped with the OS (read-only); they win over the user's, their ids cannot be installed")
APP_DATA: Setting[Path | None] = Setting(
    "WEFT_APP_DATA", Path | None, None, "root of the apps' data directories (default $XDG_DATA_HOME/weft/app-data)")
CACHE_DIR: Setting[Path | None] = Setting(
    "WEFT_CACHE_DIR", Path | None, None,
    "WEFT's cache: compiled components, mkosi, accel probe (default $XDG_CACHE_HOME/weft)")
IMAGE_STORE: Setting[Path | None] = Setting(
    "WEFT_IMAGE_STORE", Path | None, None,
    "installed app images, `<dir>/<app_id>.wapp` (default on WEFT OS /var/lib/weft/images, "
    "elsewhere $XDG_DATA_HOME/weft/images)")
SYSTEM_IMAGE_STORE: Setting[Path] = Setting(
    "WEFT_SYSTEM_IMAGE_STORE", Path, Path("/usr/share/weft/images"),
    "app images shipped with the OS (read-only; its presence marks WEFT OS); their ids cannot be installed")
TRUSTED_KEYS: Setting[Path] = Setting(
    "WEFT_TRUSTED_KEYS", Path, Path("/usr/share/weft/trusted-keys"),
    "publisher keys (`*.pub`) the device trusts: the listing, `weft-pack install/info` and weft-mountd accept only "
    "images signed by one of them")
ROLLBACK_RECORD: Setting[Path] = Setting(
    "WEFT_ROLLBACK_RECORD", Path, Path("/var/lib/weft-mountd/versions.json"),
    "highest version of each app activated on this device (weft-mountd writes it; weft-pack reads it)")
APPD_SOCKET: Setting[Path | None] = Setting(
    "WEFT_APPD_SOCKET", Path | None, None, "weft-appd's Unix socket (default $XDG_RUNTIME_DIR/weft/appd.sock)")
MOUNTD_SOCKET: Setting[Path] = Setting(
    "WEFT_MOUNTD_SOCKET", Path, Path("/run/weft-mountd.sock"),
    "weft-mountd's socket (a systemd socket unit on the image)")
APPS_MOUNT_ROOT: Setting[Path] = Setting(
    "WEFT_APPS_MOUNT_ROOT", Path, Path("/run/weft/apps"),
    "where weft-mountd mounts verified app images (`<root>/<app_id>`)")

# -- weft-appd -----------------------------------------------------------------------------

APPD_WS_PORT: Setting[int] = Setting(
    "WEFT_APPD_WS_PORT", TcpPort, 7410, "appd's WebSocket port on 127.0.0.1 (0: any free port)")
APPD_ORIGINS: Setting[frozenset[str]] = Setting(
    "WEFT_APPD_ORIGINS", frozenset[str], frozenset({"weft-system://shell"}),
    "browser origins allowed to use the boot token (space-separated)", split=_words)
APPD_RUNTIME_DIR: Setting[Path | None] = Setting(
    "WEFT_APPD_RUNTIME_DIR", Path | None, None,
    "weft-appd's XDG_RUNTIME_DIR as the shells see it: they read its weft/appd.token and weft/appd.wsport "
    "(default $XDG_RUNTIME_DIR)")
RUNTIME_BIN: Setting[tuple[str, ...] | None] = Setting(
    "WEFT_RUNTIME_BIN", tuple[str, ...] | None, None,
    "runtime command line (default: this Python's weft.daemons.runtime)", split=shlex.split)
RUNTIME_POOL: Setting[int] = Setting("WEFT_RUNTIME_POOL", PoolSize, 2, "standby runtimes kept ready for launches")
READY_TIMEOUT_S: Setting[float] = Setting("WEFT_READY_TIMEOUT_S", Seconds, 30.0, "seconds an app has to signal READY")
MAX_SESSIONS: Setting[int] = Setting("WEFT_MAX_SESSIONS", SessionCap, 64, "live sessions at once")
APP_SOURCE: Setting[AppSourceMode] = Setting(
    "WEFT_APP_SOURCE", AppSourceMode, "verified",
    "`verified`: apps run only from signed images mounted by weft-mountd; `directory`: from package "
    "directories (developer hosts without device-mapper); no fallback between them")
APP_MEMORY_MIB: Setting[int] = Setting("WEFT_APP_MEMORY_MIB", MemoryMib, 256, "memory cap of one app's guest, MiB")
APP_CGROUPS: Setting[CgroupMode] = Setting(
    "WEFT_APP_CGROUPS", CgroupMode, "off",
    "`required`: each runtime in its own cgroup below appd's delegated cgroup, or appd refuses to start; `off`: none")
APP_CGROUP_MEMORY_MIB: Setting[int] = Setting(
    "WEFT_APP_CGROUP_MEMORY_MIB", CgroupMemoryMib, 512, "memory.max of one app's cgroup (whole runtime process), MiB")
APP_CPU_PERCENT: Setting[int] = Setting(
    "WEFT_APP_CPU_PERCENT", CpuPercent, 200, "cpu.max of one app's cgroup, % of one CPU")
APP_PIDS_MAX: Setting[int] = Setting(
    "WEFT_APP_PIDS_MAX", PidsMax, 256, "pids.max of one app's cgroup (processes + threads)")
COMPOSITOR_SOCKET: Setting[Path | None] = Setting(
    "WEFT_COMPOSITOR_SOCKET", Path | None, None,
    "weft-compositor's IPC socket, which appd connects to (announces app windows); unset: no desktop, apps run "
    "headless")

APPD_CGROUP: Setting[str | None] = Setting(
    "WEFT_APPD_CGROUP", str | None, None,
    "weft-compositor: the cgroup (as in /proc/<pid>/cgroup) a peer of its IPC socket must be in (appd's); unset: "
    "any process of the compositor's uid")

# -- every program -------------------------------------------------------------------------

DEBUG: Setting[bool] = Setting("WEFT_DEBUG", bool, False, "`1`: tracebacks on failure, like --debug", split=_flag)

ALL: tuple[Setting[Any], ...] = (
    HOME, XDG_RUNTIME_DIR, XDG_DATA_HOME, XDG_CACHE_HOME, APP_STORE, SYSTEM_APP_STORE, APP_DATA, CACHE_DIR,
    IMAGE_STORE, SYSTEM_IMAGE_STORE, TRUSTED_KEYS, ROLLBACK_RECORD, APPD_SOCKET,
    MOUNTD_SOCKET, APPS_MOUNT_ROOT, APPD_WS_PORT, APPD_ORIGINS, APPD_RUNTIME_DIR, RUNTIME_BIN, RUNTIME_POOL,
    READY_TIMEOUT_S, MAX_SESSIONS, APP_SOURCE, APP_MEMORY_MIB, APP_CGROUPS, APP_CGROUP_MEMORY_MIB, APP_CPU_PERCENT,
    APP_PIDS_MAX,
    COMPOSITOR_SOCKET, APPD_CGROUP, DEBUG,
)

# -- derived paths -------------------------------------------------------------------------


def data_home(env: Env | None = None) -> Path | None:
    home = HOME.read(env)
    return XDG_DATA_HOME.read(env) or (home / ".local/share" if home else None)


def cache_dir(env: Env | None = None) -> Path:
    """WEFT's cache directory (compiled components, the mkosi download, the accel probe)."""
    explicit = CACHE_DIR.read(env)
    if explicit:
        return explicit
    home = HOME.read(env)
    cache_home = XDG_CACHE_HOME.read(env) or (home / ".cache" if home else Path("/var/cache"))
    return cache_home / "weft"


def appd_runtime_dir(env: Env | None = None) -> Path:
    """weft-appd's per-boot directory: socket, token, WebSocket port file, last-session.json."""
    runtime = XDG_RUNTIME_DIR.read(env)
    if runtime is None:
        raise SettingError("XDG_RUNTIME_DIR is not set; weft-appd keeps its sockets there")
    return runtime / "weft"


def appd_client_dir(env: Env | None = None) -> Path:
    """weft-appd's per-boot directory as its WebSocket clients (the shells) find it."""
    runtime = APPD_RUNTIME_DIR.read(env) or XDG_RUNTIME_DIR.read(env)
    if runtime is None:
        raise SettingError(f"set {APPD_RUNTIME_DIR.env} or XDG_RUNTIME_DIR: weft-appd's token and port are there")
    return runtime / "weft"


def appd_socket(env: Env | None = None) -> Path:
    return APPD_SOCKET.read(env) or appd_runtime_dir(env) / "appd.sock"


def markdown_table() -> str:
    """The settings table of docs/platform.md."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for setting in ALL:
        default = setting.default
        if isinstance(default, frozenset):
            default = " ".join(sorted(default))
        elif isinstance(default, bool):
            default = int(default)
        shown = "–" if default is None else f"`{default}`"
        rows.append(f"| `{setting.env}` | {shown} | {setting.doc} |")
    return "\n".join(rows)
