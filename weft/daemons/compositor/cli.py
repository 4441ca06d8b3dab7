"""weft-compositor: the WEFT desktop's Wayland compositor. Starts the system shell and the app shells.

Backends: auto (nested under $WAYLAND_DISPLAY or $DISPLAY, else DRM/KMS on a seat), drm,
headless, wayland, x11; pixman rendering. Prints WAYLAND_DISPLAY=<name> once the socket exists
(and sends sd_notify READY=1). SIGUSR1 logs frame-time p50/p95. See docs/desktop.md.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from weft import settings
from weft.cli_support import ArgumentParser, add_debug_flag, daemon_logging, run_cli
from weft.daemons.compositor.config import BACKENDS, DEFAULT_SIZE, CompositorConfig, parse_size
from weft.errors import UsageError


def _command(text: str) -> tuple[str, ...]:
    try:
        words = tuple(shlex.split(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    if not words:
        raise argparse.ArgumentTypeError("an empty command")
    return words


def _size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_command_line(argv: Sequence[str], env: Mapping[str, str] | None = None) -> CompositorConfig:
    doc = __doc__ or ""
    parser = ArgumentParser(prog="weft-compositor", description=doc.split("\n\n")[0],
                            epilog=doc.split("\n\n")[1])
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="default: auto")
    parser.add_argument("--size", type=_size, default=DEFAULT_SIZE, metavar="WxH",
                        help="output size on the headless and nested backends (default 1280x800)")
    parser.add_argument("--shell", type=_command, default=(), metavar="CMD",
                        help="the system shell (its windows are the panel); restarted with back-off")
    parser.add_argument("--app-shell", type=_command, default=(), metavar="CMD",
                        help="run as `CMD <app_id> <session_id>` for each session appd announces")
    parser.add_argument("--app-shell-standby", action="store_true",
                        help="keep one `CMD --standby` started ahead: a launch hands it `<app_id> <session_id> "
                             "<token>` on stdin instead of starting a process")
    parser.add_argument("--ipc-socket", type=Path, metavar="PATH",
                        help="the socket appd connects to (default $XDG_RUNTIME_DIR/weft/compositor.sock)")
    parser.add_argument("--appd-cgroup", metavar="PATH", default=settings.APPD_CGROUP.read(env),
                        help=f"only a peer in this cgroup may use the IPC socket (${settings.APPD_CGROUP.env})")
    parser.add_argument("--test-input", action="store_true",
                        help="enable the virtual pointer/keyboard protocols (tests only: any client could "
                             "then inject input)")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.app_shell_standby and not args.app_shell:
        parser.error("--app-shell-standby needs --app-shell CMD")
    ipc_socket = args.ipc_socket
    if ipc_socket is None:
        runtime = settings.XDG_RUNTIME_DIR.read(env)
        if runtime is None:
            raise UsageError("XDG_RUNTIME_DIR is not set: give --ipc-socket PATH")
        ipc_socket = runtime / "weft" / "compositor.sock"
    return CompositorConfig(backend=args.backend, size=args.size, shell=args.shell, app_shell=args.app_shell,
                            app_shell_standby=args.app_shell_standby,
                            ipc_socket=ipc_socket, appd_cgroup=args.appd_cgroup or None,
                            test_input=args.test_input, debug=args.debug)


def main_entry(argv: Sequence[str]) -> int:
    config = parse_command_line(argv)
    daemon_logging("weft-compositor", config.debug)
    if settings.XDG_RUNTIME_DIR.read() is None:
        raise UsageError("XDG_RUNTIME_DIR is not set: Wayland needs it for its socket")
    from weft.daemons.compositor.server import Compositor, prepare_environment  # after logging: wlroots logs

    prepare_environment(config)
    compositor = Compositor(config)
    try:
        return compositor.run()
    finally:
        compositor.destroy()


def main() -> int:
    return run_cli(main_entry)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
