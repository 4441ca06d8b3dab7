"""weft-appd: the session daemon. Launches apps, supervises their runtimes, relays IPC.

Listens on $XDG_RUNTIME_DIR/weft/appd.sock (msgpack) and ws://127.0.0.1:$WEFT_APPD_WS_PORT
(JSON, token in $XDG_RUNTIME_DIR/weft/appd.token). Environment (weft/settings.py):
WEFT_APPD_SOCKET, WEFT_APPD_WS_PORT (0 = any free port, written to appd.wsport),
WEFT_APPD_ORIGINS, WEFT_RUNTIME_BIN, WEFT_RUNTIME_POOL, WEFT_READY_TIMEOUT_S,
WEFT_MAX_SESSIONS, WEFT_APP_MEMORY_MIB, WEFT_APP_CGROUPS (required|off),
WEFT_APP_CGROUP_MEMORY_MIB, WEFT_APP_CPU_PERCENT, WEFT_APP_PIDS_MAX, WEFT_APP_SOURCE (verified: through
weft-mountd at WEFT_MOUNTD_SOCKET, mounts under WEFT_APPS_MOUNT_ROOT; directory: WEFT_APP_STORE),
WEFT_COMPOSITOR_SOCKET (weft-compositor's IPC socket: app windows; unset: no desktop).
"""
from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence

from weft.cli_support import ArgumentParser, add_debug_flag, daemon_logging, run_cli
from weft.daemons.appd.app_source import app_source
from weft.daemons.appd.cgroups import AppCgroups
from weft.daemons.appd.compositor_link import CompositorLink
from weft.daemons.appd.config import AppdConfig
from weft.daemons.appd.dispatch import Caller, Dispatcher
from weft.daemons.appd.hub import Hub
from weft.daemons.appd.runtime_dir import RuntimeDir
from weft.daemons.appd.runtimes import RuntimePool
from weft.daemons.appd.sd_notify import sd_notify
from weft.daemons.appd.sessions import SessionManager
from weft.daemons.appd.tokens import load_or_create_boot_token
from weft.daemons.appd.unix_socket import UnixServer
from weft.daemons.appd.websocket import WebSocketServer
from weft.daemons.protocol import LaunchApp, to_wire
from weft.errors import WeftError
from weft.manifest import is_valid_app_id

log = logging.getLogger("weft.appd")
MAX_RESTORED = 64


def _take_saved_sessions(runtime: RuntimeDir, name: str) -> list[str]:
    """App ids saved at the last graceful shutdown (the file is consumed)."""
    raw = runtime.read_private(name)
    runtime.remove(name)
    if raw is None:
        return []
    try:
        app_ids = json.loads(raw)
    except ValueError as exc:
        log.warning("ignoring %s: %s", runtime.path / name, exc)
        return []
    if not isinstance(app_ids, list):
        return []
    return [a for a in app_ids if isinstance(a, str) and is_valid_app_id(a)][:MAX_RESTORED]


async def serve(config: AppdConfig) -> None:
    runtime = RuntimeDir.open(config.runtime_dir)
    try:
        await _serve(config, runtime)
    finally:
        runtime.close()


def _socket_directory(config: AppdConfig, runtime: RuntimeDir) -> RuntimeDir:
    if config.socket_path.parent == config.runtime_dir:
        return runtime
    return RuntimeDir.open(config.socket_path.parent, create=False)  # WEFT_APPD_SOCKET elsewhere: same checks


async def _serve(config: AppdConfig, runtime: RuntimeDir) -> None:
    boot_token = load_or_create_boot_token(runtime, config.token_path.name)
    hub = Hub()
    # Before any socket is bound: with WEFT_APP_CGROUPS=required, no delegation means no start.
    pool = RuntimePool(config, AppCgroups.delegated(config.app_limits) if config.cgroups == "required" else None)
    source = app_source(config)  # WEFT_APP_SOURCE: verified images through weft-mountd, or directories
    compositor = CompositorLink(config.compositor_socket) if config.compositor_socket is not None else None
    manager = SessionManager(config, pool, hub, source, compositor)
    dispatcher = Dispatcher(manager, hub, config.max_sessions)
    unix = UnixServer(_socket_directory(config, runtime), config.socket_path.name, dispatcher)
    websocket = WebSocketServer(config.ws_port, boot_token, config.control_origins, manager, hub, dispatcher)
    await unix.start()
    try:
        port = await websocket.start()
    except OSError as exc:
        await unix.close()
        raise WeftError(f"cannot listen on 127.0.0.1:{config.ws_port}: {exc.strerror}") from None
    runtime.write_text(config.wsport_path.name, str(port))
    pool.start()
    if compositor is None:
        log.info("no desktop (WEFT_COMPOSITOR_SOCKET is unset): apps run without windows")
    else:
        compositor.start(on_window_closed=manager.window_closed)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    sd_notify("READY=1")
    log.info("listening on %s and ws://127.0.0.1:%d", config.socket_path, port)
    for app_id in _take_saved_sessions(runtime, config.last_session_path.name):
        reply = await dispatcher.handle(LaunchApp(app_id=app_id), Caller())
        log.info("restoring a session of %s: %s", app_id, to_wire(reply))

    await stop.wait()
    sd_notify("STOPPING=1")
    runtime.write_text(config.last_session_path.name, json.dumps([s.app_id for s in manager.live_sessions()]))
    await unix.close()
    await websocket.close()
    await manager.stop_all()
    if compositor is not None:
        await compositor.close()  # after stop_all: the last app_surface_destroyed go out first
    await pool.close()
    await source.close()
    log.info("stopped")


def main_entry(argv: Sequence[str]) -> int:
    parser = ArgumentParser(prog="weft-appd", description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n")[1])
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    daemon_logging("weft-appd", args.debug)
    # websockets logs every connection at INFO: under a connection flood that is a log storm
    logging.getLogger("websockets").setLevel(logging.DEBUG if args.debug else logging.WARNING)
    asyncio.run(serve(AppdConfig.from_env()))
    return 0


def main() -> int:
    return run_cli(main_entry)


if __name__ == "__main__":
    sys.exit(main())
