"""weft-mountd: mounts signed, dm-verity-checked app images for weft-appd (runs as root).

Started by weft-mountd.socket (the socket is /run/weft-mountd.sock); answers only the appd
user. `--socket PATH` binds a socket itself instead, for development. See docs/mountd.md.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pwd
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from weft import settings
from weft.cli_support import ArgumentParser, add_debug_flag, daemon_logging, run_cli
from weft.daemons.appd.sd_notify import sd_notify
from weft.daemons.mountd.config import APPD_USER, MountdConfig
from weft.daemons.mountd.kernel import Kernel, LinuxKernel
from weft.daemons.mountd.registry import Registry
from weft.daemons.mountd.server import MountdServer, activated_socket, bind_socket
from weft.errors import UsageError, WeftError

log = logging.getLogger("weft.mountd")
DEFAULTS = MountdConfig(appd_uid=0)


def _uid_of(user: str) -> int:
    if user.isdigit():
        return int(user)
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        raise WeftError(f"no user '{user}' (the user weft-appd runs as)") from None


async def serve(kernel: Kernel, config: MountdConfig, socket_path: Path | None) -> None:
    listener = activated_socket()
    if listener is None:
        if socket_path is None:
            raise UsageError("no socket: start weft-mountd through weft-mountd.socket, or give --socket PATH")
        listener = bind_socket(str(socket_path))
    server = MountdServer(Registry(kernel, config), config.appd_uid)
    await server.start(listener)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    sweeper = asyncio.create_task(server.sweep_forever())
    sd_notify("READY=1")
    log.info("serving uid %d; images from %s, then %s; mounts under %s", config.appd_uid, config.system_images,
             config.images, config.mount_root)
    await stop.wait()
    sd_notify("STOPPING=1")
    sweeper.cancel()
    await server.close()


def parse_command_line(argv: Sequence[str], env: Mapping[str, str] | None = None,
                       ) -> tuple[argparse.Namespace, MountdConfig]:
    """The arguments and the configuration they give; `env` (default: this process's) supplies the
    settings every other WEFT program reads too (WEFT_TRUSTED_KEYS, WEFT_SYSTEM_IMAGE_STORE,
    WEFT_IMAGE_STORE, WEFT_APPS_MOUNT_ROOT, WEFT_ROLLBACK_RECORD); an option overrides its setting."""
    doc = __doc__ or ""
    trusted_keys = settings.TRUSTED_KEYS.read(env)
    system_images = settings.SYSTEM_IMAGE_STORE.read(env)
    images = settings.IMAGE_STORE.read(env) or DEFAULTS.images
    mount_root = settings.APPS_MOUNT_ROOT.read(env)
    rollback_record = settings.ROLLBACK_RECORD.read(env)
    parser = ArgumentParser(prog="weft-mountd", description=doc.split("\n\n")[0], epilog=doc.split("\n\n")[1])
    parser.add_argument("--socket", type=Path, help="listen here instead of on the socket systemd passes")
    parser.add_argument("--appd-user", default=APPD_USER,
                        help=f"the only user (name or uid) whose requests are served (default: {APPD_USER})")
    parser.add_argument("--system-images", type=Path, default=system_images,
                        help=f"images shipped with the OS, checked first (default: {DEFAULTS.system_images})")
    parser.add_argument("--images", type=Path, default=images,
                        help=f"installed images (default: {DEFAULTS.images})")
    parser.add_argument("--trusted-keys", type=Path, default=trusted_keys,
                        help=f"directory of trusted publisher keys *.pub (default: ${settings.TRUSTED_KEYS.env}, "
                             f"else {settings.TRUSTED_KEYS.default})")
    parser.add_argument("--mount-root", type=Path, default=mount_root,
                        help=f"where images are mounted, <root>/<app_id> (default: {DEFAULTS.mount_root})")
    parser.add_argument("--rollback-record", type=Path, default=rollback_record,
                        help=f"highest version activated per app (default: {DEFAULTS.rollback_record})")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    config = MountdConfig(system_images=args.system_images, images=args.images, trusted_keys=args.trusted_keys,
                          mount_root=args.mount_root, rollback_record=args.rollback_record,
                          appd_uid=_uid_of(args.appd_user))
    return args, config


def main_entry(argv: Sequence[str]) -> int:
    args, config = parse_command_line(argv)
    daemon_logging("weft-mountd", args.debug)
    if os.geteuid() != 0:
        raise WeftError("weft-mountd must run as root (it is started by weft-mountd.socket)")
    asyncio.run(serve(LinuxKernel(), config, args.socket))
    return 0


def main() -> int:
    return run_cli(main_entry)


if __name__ == "__main__":
    sys.exit(main())
