"""weft-runtime: run one app session's Wasm component (one process per session).

    weft-runtime APP_ID SESSION_ID [--relay-fd FD]   run a package directory's session now (developer)
    weft-runtime --standby --relay-fd FD             pre-start; wait for appd to assign a session
    weft-runtime --compile-only APP_ID               fill the compile cache from a package directory

Importing wasmtime and creating the Engine costs ~100 ms, so appd keeps standby runtimes that
have already paid it; the session itself still gets a process of its own. Under appd the
launch message names the package root (a verified image's mount); the two direct forms read
the directory stores and so need WEFT_APP_SOURCE=directory, like appd.
Exit status: 0 the app returned, 1 it failed or trapped, 2 usage, 3 stopped on request.
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from weft import settings
from weft.cli_support import ArgumentParser, add_debug_flag, daemon_logging, run_cli
from weft.daemons.relay import Launch
from weft.daemons.runtime.channels import Relay
from weft.daemons.runtime.engine import ComponentCache, EngineOptions, make_engine
from weft.daemons.runtime.session import AppSession, ExitCode, SessionSettings
from weft.errors import UsageError, WeftError
from weft.manifest import is_valid_app_id, resolve_inside
from weft.store import InstalledPackage, StorePaths

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
PR_SET_PDEATHSIG = 1


class StopSignals:
    """Stop signals are blocked in every thread and taken by one waiting thread, so they are
    seen even while the main thread is inside wasmtime (where Python handlers cannot run)."""

    def __init__(self) -> None:
        self.session: AppSession | None = None
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # inherited by every later thread
        # If appd dies without closing our relay cleanly, we still hear about it.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        threading.Thread(target=self._wait, name="stop-signals", daemon=True).start()

    def _wait(self) -> None:
        while True:
            signal.sigwait(STOP_SIGNALS)
            if self.session is None:
                os._exit(ExitCode.STOPPED)  # nothing running yet: nothing to clean up
            self.session.request_stop()


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = ArgumentParser(prog="weft-runtime", description=__doc__.split("\n\n")[0])
    parser.add_argument("app_id", nargs="?", help="the app to run (e.g. org.weft.demo.counter)")
    parser.add_argument("session_id", nargs="?", type=int, help="session id assigned by weft-appd")
    parser.add_argument("--relay-fd", type=int, help="inherited socket to weft-appd")
    parser.add_argument("--standby", action="store_true", help="wait for a launch message on the relay")
    parser.add_argument("--compile-only", action="store_true", help="compile APP_ID into the cache and exit")
    parser.add_argument("--memory-mib", help=f"the guest's memory cap (default {settings.APP_MEMORY_MIB.default})")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.standby and (args.relay_fd is None or args.app_id is not None):
        raise UsageError("--standby takes --relay-fd and no APP_ID")
    if args.compile_only and (args.app_id is None or args.session_id is not None):
        raise UsageError("--compile-only takes exactly APP_ID")
    if not (args.standby or args.compile_only) and (args.app_id is None or args.session_id is None):
        raise UsageError("APP_ID and SESSION_ID are required (or --standby / --compile-only)")
    try:  # the same bounds as WEFT_APP_MEMORY_MIB and the relay's launch message
        args.memory_mib = (settings.APP_MEMORY_MIB.default if args.memory_mib is None
                           else settings.APP_MEMORY_MIB.parse(args.memory_mib, "--memory-mib"))
    except settings.SettingError as exc:
        raise UsageError(str(exc)) from None
    if args.session_id is not None and args.session_id < 1:
        raise UsageError(f"invalid session id: {args.session_id}")
    if args.app_id is not None and not is_valid_app_id(args.app_id):
        raise UsageError(f"'{args.app_id}' is not a valid app ID (expected e.g. com.example.notes)")
    return args


def _documents_dir() -> Path | None:
    home = settings.HOME.read()
    return home / "Documents" if home else None


def _directory_package(store_paths: StorePaths, app_id: str) -> InstalledPackage:
    """The direct forms read a package directory: only where directories are the app source."""
    if settings.APP_SOURCE.read() != "directory":
        raise WeftError(f"weft-runtime {app_id} runs a package directory, which needs "
                        f"{settings.APP_SOURCE.env}=directory; verified images are launched by weft-appd")
    return store_paths.resolve_package(app_id)


def _check_launch(launch: Launch) -> None:
    """A verified image is only ever read from its mount under the apps mount root."""
    mount = settings.APPS_MOUNT_ROOT.read() / launch.app_id
    if launch.image_root_hash is not None and launch.package_root != mount:
        raise WeftError(f"launch message: image {launch.app_id} must be read from {mount}, "
                        f"not {launch.package_root}")


def main_entry(argv: Sequence[str]) -> int:
    args = _parse(argv)
    daemon_logging(f"weft-runtime[{os.getpid()}]", args.debug)
    stop = StopSignals()
    store_paths = StorePaths.from_env()
    options = EngineOptions()
    engine = make_engine(options)
    cache = ComponentCache(engine, options, store_paths.cache_root / "components")
    if args.compile_only:
        package = _directory_package(store_paths, args.app_id)
        cache.load(resolve_inside(package.path, package.manifest.runtime.module))
        return 0
    relay = None
    if args.relay_fd is not None:
        try:
            relay = Relay(socket.socket(fileno=args.relay_fd))
        except OSError as exc:
            raise UsageError(f"--relay-fd {args.relay_fd}: {exc.strerror}") from None
    if args.standby:
        assert relay is not None  # _parse: --standby takes --relay-fd
        launch = relay.wait_launch()
        if launch is None:
            return 0  # appd went away before giving us a session
        _check_launch(launch)
        session_settings = SessionSettings(
            app_id=launch.app_id, session_id=launch.session_id, memory_mib=launch.memory_mib,
            package_root=launch.package_root, publisher=launch.publisher, image_root_hash=launch.image_root_hash)
    else:
        package = _directory_package(store_paths, args.app_id)
        session_settings = SessionSettings(app_id=args.app_id, session_id=args.session_id, memory_mib=args.memory_mib,
                                           package_root=package.path, publisher=package.publisher)
    session = AppSession(engine, cache, store_paths, _documents_dir(), session_settings, relay)
    stop.session = session
    if relay is not None:
        relay.start_reader(on_eof=session.request_stop)
    return int(session.run())


def main() -> int:
    code = run_cli(main_entry)
    # Skip interpreter finalisation: wasmtime's WASI worker threads may still be alive, and
    # tearing the interpreter down under them aborts the process instead of exiting cleanly.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
