"""weft-app-shell <app_id> <session_id>: one app's window, started by weft-compositor for one session.

The session token arrives as one line on stdin (never in argv or the environment, which other
processes of the uid can read); it binds this shell's WebSocket to its session. With
`--standby` (the compositor keeps one started ahead) GTK and WebKit start first, and the one
line on stdin is `<app_id> <session_id> <token>`; end of file before it is a clean exit 0. The page is
`weft-app://<app_id>/<[ui].entry>`, served from the package (package_files.py) with a strict
CSP; `weftIpc` reaches appd only through this process (session.py). It exits 0 when the window
is closed (the compositor tells appd), when appd says the session has stopped or no longer
knows its token, or when appd stays unreachable for UNREACHABLE_EXIT_S.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from importlib import resources

from weft import settings
from weft.cli_support import ArgumentParser, add_debug_flag, daemon_logging, run_cli
from weft.daemons.app_shell.package_files import SCHEME, PackageFiles, package_root
from weft.daemons.app_shell.session import SessionBridge
from weft.daemons.protocol import SessionId
from weft.daemons.webshell import appd_ws
from weft.daemons.webshell.csp import app_csp
from weft.errors import UsageError, WeftError
from weft.manifest import require_app_id

log = logging.getLogger("weft.app_shell")
TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,256}$")  # appd's tokens are urlsafe base64; it goes into a URL
UNREACHABLE_EXIT_S = 30.0
MAX_LINE = 512


def _session_id(text: str) -> int:
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(SessionId).validate_python(int(text))
    except (ValueError, ValidationError):
        raise UsageError(f"session id {text[:40]!r} is not a number from 1 to 2^63-1") from None


def _token(text: str) -> str:
    if not text:
        raise UsageError("no session token on stdin (the compositor writes it, one line)")
    if not TOKEN.match(text):
        raise UsageError("the session token on stdin is malformed")
    return text


def _app_id(text: str) -> str:
    try:
        return require_app_id(text)
    except WeftError as exc:
        raise UsageError(str(exc)) from None


def _session(words: list[str]) -> tuple[str, int, str]:
    """app_id, session_id and token from the words of a standby's one line on stdin."""
    if len(words) != 3:
        raise UsageError("a standby app shell reads one line `<app_id> <session_id> <token>` on stdin")
    return _app_id(words[0]), _session_id(words[1]), _token(words[2])


def _user_script(session_id: int) -> str:
    template = resources.files("weft.daemons.app_shell").joinpath("assets", "weft-ipc.js").read_text()
    return template.replace("__WEFT_SESSION_ID__", json.dumps(session_id))  # a validated integer, not text


def main_args(argv: Sequence[str]) -> int:
    parser = ArgumentParser(prog="weft-app-shell", description="one WEFT app's window, bound to its session")
    parser.add_argument("app_id", nargs="?")
    parser.add_argument("session_id", nargs="?")
    parser.add_argument("--standby", action="store_true",
                        help="start GTK and WebKit now, then read `<app_id> <session_id> <token>` on stdin")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.standby:
        if args.app_id is not None:
            raise UsageError("--standby takes no app id or session id: they come on stdin")
        daemon_logging("weft-app-shell[standby]", args.debug)
        from weft.daemons.webshell import webkit  # GTK starts here

        log.info("ready: waiting for <app_id> <session_id> <token> on stdin")
        line = webkit.read_line_while_serving(sys.stdin.fileno(), MAX_LINE)
        if not line:
            log.info("stdin closed before a session came: exiting")
            return 0
        if len(line) > MAX_LINE:
            raise UsageError(f"the line on stdin is longer than {MAX_LINE} bytes")
        app_id, session_id, token = _session(line.decode(errors="replace").split(" "))
    else:
        if args.session_id is None:
            raise UsageError("give <app_id> <session_id> (or --standby)")
        app_id, session_id = _app_id(args.app_id), _session_id(args.session_id)
        token = _token(sys.stdin.readline(MAX_LINE).strip())
    appd_dir = settings.appd_client_dir()
    files = PackageFiles(app_id, package_root(app_id))
    daemon_logging(f"weft-app-shell[{app_id}#{session_id}]", args.debug)

    from weft.daemons.webshell import webkit  # GTK starts here: after the arguments are checked

    def serve(uri: str) -> webkit.Served:
        inner = files.inner_path(uri)
        found = files.read(inner) if inner is not None else None
        if found is None:
            log.info("not found: %s", uri)
            return webkit.Served(404, b"not found\n", "text/plain", app_csp(None))
        html = found.body if found.content_type == "text/html" else None
        return webkit.Served(200, found.body, found.content_type, app_csp(html))

    exit_reason: list[str] = []

    def end(reason: str) -> None:
        if not exit_reason:
            exit_reason.append(reason)
            log.info("closing: %s", reason)
            page.quit()

    unreachable_since: list[float] = []

    def disconnected(reason: str) -> None:
        bridge.appd_disconnected()
        if not unreachable_since:
            unreachable_since.append(time.monotonic())
            log.warning("weft-appd: %s", reason)
        elif time.monotonic() - unreachable_since[0] > UNREACHABLE_EXIT_S:
            end(f"weft-appd unreachable for {UNREACHABLE_EXIT_S:.0f} s")

    def connected() -> None:
        unreachable_since.clear()
        bridge.appd_connected()

    def refused(status: int) -> bool:
        if status in (401, 403):  # appd no longer knows this token: the session is over
            page.in_main_thread(lambda: end(f"weft-appd refused the session token (HTTP {status})"))
            return True
        return False

    socket: appd_ws.AppdSocket
    page = webkit.WebPage(scheme=SCHEME, origin=files.origin, serve=serve, title=files.manifest.package.name,
                          on_message=lambda text: bridge.from_page(text), user_script=_user_script(session_id))
    bridge = SessionBridge(session_id, page.deliver, lambda message: socket.send(message), end)
    later = page.in_main_thread
    socket = appd_ws.AppdSocket(
        lambda: f"ws://127.0.0.1:{appd_ws.read_port(appd_dir)}/?token={token}",
        appd_ws.Handlers(message=lambda message: later(lambda: bridge.from_appd(message)),
                         connected=lambda: later(connected),
                         disconnected=lambda reason: later(lambda: disconnected(reason)),
                         refused=refused))
    log.info("showing %s/%s from %s", files.origin, files.entry, files.root)
    page.show(f"{files.origin}/{files.entry}", socket)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(main_args, argv)
