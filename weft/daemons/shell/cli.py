"""weft-shell: the system UI. A WebKitGTK window showing `weft-system://shell/` (taskbar, launcher, clock).

The compositor starts it (and restarts it). It connects to weft-appd's WebSocket with the
per-boot token, read from `$WEFT_APPD_RUNTIME_DIR/weft/` (default `$XDG_RUNTIME_DIR/weft/`),
and keeps reconnecting with backoff; while appd is unreachable the taskbar says so. With
`--debug`, every state the page renders is logged as a `shell-state {json}` line.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from weft import settings
from weft.cli_support import ArgumentParser, add_debug_flag, daemon_logging, run_cli
from weft.daemons.shell import assets_server
from weft.daemons.shell.desk import Desk
from weft.daemons.webshell import appd_ws

log = logging.getLogger("weft.shell")
INSTALLED_REFRESH_S = 30  # appd does not announce installs: ask again now and then


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise ValueError(text)
    return int(width), int(height)


def main_args(argv: Sequence[str]) -> int:
    parser = ArgumentParser(prog="weft-shell", description="the WEFT system UI")
    parser.add_argument("--size", type=_size, default=(1280, 800), help="window size before the compositor's (WxH)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    appd_dir = settings.appd_client_dir()
    daemon_logging("weft-shell", args.debug)

    from weft.daemons.webshell import webkit  # GTK starts here: after the arguments are checked

    def url() -> str:
        return f"ws://127.0.0.1:{appd_ws.read_port(appd_dir)}/?token={appd_ws.read_boot_token(appd_dir)}"

    def to_page(update: dict[str, Any]) -> None:
        page.deliver(json.dumps(update))

    socket: appd_ws.AppdSocket
    desk = Desk(to_page, lambda message: socket.send(message))
    page = webkit.WebPage(scheme=assets_server.SCHEME, origin=assets_server.ORIGIN, serve=assets_server.serve,
                          title="WEFT", on_message=desk.from_page, size=args.size)
    later = page.in_main_thread
    socket = appd_ws.AppdSocket(url, appd_ws.Handlers(
        message=lambda message: later(lambda: desk.from_appd(message)),
        connected=lambda: later(desk.appd_connected),
        disconnected=lambda reason: later(lambda: desk.appd_disconnected(reason)),
        refused=lambda status: False))  # the boot token may be renewed (a new boot of appd): keep trying
    page.every(INSTALLED_REFRESH_S, desk.refresh_installed)
    log.info("showing %s/ (weft-appd's directory: %s)", assets_server.ORIGIN, appd_dir)
    page.show(assets_server.ORIGIN + "/", socket)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(main_args, argv)
