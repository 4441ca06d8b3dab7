"""weft-appctl: drive weft-appd from a shell or a test over its Unix socket.

    weft-appctl ps | apps | launch APP_ID [--wait-ready] | send SID PAYLOAD | recv SID | stop SID

With --json each command prints appd's reply as one JSON object; without it, app payloads and
manifest text are printed with control characters escaped (`\x1b`, a newline as `\x0a`).

A launch that fails prints `error: APP_ID: REASON: MESSAGE` and exits with the reason's code
(LAUNCH_EXIT_CODES, documented in docs/platform.md); other failures exit 1, usage errors 2.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence

from pydantic import ValidationError

from weft import settings
from weft.cli_support import ArgumentParser, add_debug_flag, run_cli
from weft.daemons.protocol import (
    MAX_RECV_TIMEOUT_MS,
    AppState,
    Client,
    EndReason,
    Error,
    InstalledApps,
    IpcForward,
    IpcMessage,
    IpcRecv,
    LaunchAck,
    LaunchApp,
    LaunchReason,
    Message,
    QueryAppState,
    QueryInstalledApps,
    QueryRunning,
    RunningApps,
    SessionState,
    TerminateApp,
    to_wire,
)
from weft.errors import UsageError, WeftError
from weft.manifest import require_app_id
from weft.terminal import terminal_safe

POLL_S = 0.01
MAX_RECV_TIMEOUT_S = MAX_RECV_TIMEOUT_MS // 1000

# Why a launch failed -> exit status of `weft-appctl launch` (and of `--wait-ready` when the
# session ends before READY). A reason this table does not know yet exits 1.
LAUNCH_EXIT_CODES: dict[str, int] = {
    LaunchReason.NOT_INSTALLED: 10,
    LaunchReason.UNKNOWN_KEY: 11,
    LaunchReason.BAD_SIGNATURE: 12,
    LaunchReason.CORRUPTED: 13,  # refused at mount, or (EndReason) seen while the app ran
    LaunchReason.ROLLBACK: 14,
    LaunchReason.BAD_IMAGE: 15,
    LaunchReason.ID_MISMATCH: 16,
    LaunchReason.MOUNT_FAILED: 17,
    LaunchReason.NOT_PERMITTED: 18,
    LaunchReason.BAD_REQUEST: 19,
    LaunchReason.MOUNTD_UNAVAILABLE: 20,
    LaunchReason.BAD_PACKAGE: 21,
    EndReason.FAILED: 22,
    EndReason.READY_TIMEOUT: 23,
    EndReason.RELAY_FAILED: 24,
    EndReason.CGROUP_FAILED: 25,
}


class LaunchFailed(WeftError):
    def __init__(self, app_id: str, reason: str, message: str) -> None:
        self.exit_code = LAUNCH_EXIT_CODES.get(reason, 1)
        super().__init__(f"{app_id}: {reason}: {message}")


def _socket_path(explicit: str | None) -> str:
    if explicit:
        return explicit
    try:
        return str(settings.appd_socket())
    except settings.SettingError as exc:
        raise UsageError(f"{exc}; pass --socket") from None


def _checked(reply: Message, launching: str | None = None) -> Message:
    if isinstance(reply, Error):
        if launching is not None and reply.reason is not None:
            raise LaunchFailed(launching, reply.reason, reply.message)
        raise WeftError(f"weft-appd: {reply.message}")
    return reply


def _wait_ready(client: Client, app_id: str, session_id: int, timeout_s: float) -> AppState:
    deadline = time.monotonic() + timeout_s
    while True:
        state = _checked(client.request(QueryAppState(session_id=session_id)))
        assert isinstance(state, AppState)
        if state.state == SessionState.RUNNING:
            return state
        if state.reason is not None:
            raise LaunchFailed(app_id, state.reason, f"session {session_id} ended: {state.error}")
        if state.state not in (SessionState.STARTING,):
            raise WeftError(f"session {session_id} is {state.state.value}, not running")
        if time.monotonic() > deadline:
            raise WeftError(f"session {session_id} was not ready within {timeout_s:g} s")
        time.sleep(POLL_S)


def _human(reply: Message) -> str:
    """A reply as lines for a person. App payloads and manifest text come from app authors: every
    value goes through terminal_safe, so none can send the terminal an escape sequence (an OSC 52
    clipboard write came through once) or forge a line. --json output is exact (json.dumps
    escapes control characters itself)."""
    safe = terminal_safe
    if isinstance(reply, RunningApps):
        live = [f"{s.session_id}\t{safe(s.app_id)}" for s in reply.sessions]
        ended = [f"{s.session_id}\t{safe(s.app_id)}\tstopped\t{safe(f'{s.reason}: {s.error}')}"
                 for s in reply.ended_with_error or []]
        return "\n".join(live + ended)
    if isinstance(reply, InstalledApps):
        return "\n".join(f"{safe(a.app_id)}\t{safe(a.version)}\t{safe(a.name)}" for a in reply.apps)
    if isinstance(reply, (LaunchAck, AppState)):
        state = f"\t{reply.state.value}" if isinstance(reply, AppState) else f"\t{safe(reply.app_id)}"
        return f"{reply.session_id}{state}"
    if isinstance(reply, IpcMessage):
        return safe(reply.payload)
    return json.dumps(to_wire(reply))


def _session_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"invalid session id: {text!r}") from None
    if value < 1:
        raise UsageError(f"invalid session id: {text!r}")
    return value


def _seconds(text: str) -> float:
    """A finite, non-negative number of seconds (`nan`, `inf` and negatives are usage errors)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"not a finite, non-negative number of seconds: {text!r}")
    return value


def _recv_timeout(text: str) -> float:
    value = _seconds(text)
    if value > MAX_RECV_TIMEOUT_S:
        raise argparse.ArgumentTypeError(f"at most {MAX_RECV_TIMEOUT_S} seconds (appd's limit), not {text!r}")
    return value


def main_entry(argv: Sequence[str]) -> int:
    parser = ArgumentParser(prog="weft-appctl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--socket", help="appd socket (default $XDG_RUNTIME_DIR/weft/appd.sock)")
    parser.add_argument("--json", action="store_true", help="print appd's reply as JSON")
    add_debug_flag(parser)
    # --json may also follow the command (`weft-appctl ps --json`)
    json_flag = ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print appd's reply as JSON")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    commands.add_parser("ps", help="list running sessions (and recent ones that ended with an error)",
                        parents=[json_flag])
    commands.add_parser("apps", help="list installed apps", parents=[json_flag])
    launch = commands.add_parser("launch", help="start a session of APP_ID", parents=[json_flag])
    launch.add_argument("app_id")
    launch.add_argument("--wait-ready", action="store_true", help="return once the app signalled READY")
    launch.add_argument("--timeout", type=_seconds, default=30.0, help="seconds to wait for READY")
    send = commands.add_parser("send", help="send PAYLOAD to session SID's app", parents=[json_flag])
    send.add_argument("session_id", type=_session_id)
    send.add_argument("payload")
    recv = commands.add_parser("recv", help="print the next message from session SID's app", parents=[json_flag])
    recv.add_argument("session_id", type=_session_id)
    recv.add_argument("--timeout", type=_recv_timeout, default=5.0, help="seconds to wait (at most 60)")
    stop = commands.add_parser("stop", help="stop session SID", parents=[json_flag])
    stop.add_argument("session_id", type=_session_id)
    args = parser.parse_args(argv)

    try:
        return _run(args)
    except ValidationError as exc:  # e.g. a payload over the size cap
        raise UsageError(exc.errors()[0]["msg"]) from None


def _request(args) -> Message:  # type: ignore[no-untyped-def]
    """The request for a command, validated before anything is sent."""
    if args.command == "ps":
        return QueryRunning()
    if args.command == "apps":
        return QueryInstalledApps()
    if args.command == "launch":
        return LaunchApp(app_id=require_app_id(args.app_id))
    if args.command == "send":
        return IpcForward(session_id=args.session_id, payload=args.payload)
    if args.command == "recv":
        return IpcRecv(session_id=args.session_id, timeout_ms=round(args.timeout * 1000))
    return TerminateApp(session_id=args.session_id)


def _run(args) -> int:  # type: ignore[no-untyped-def]
    request = _request(args)
    with Client(_socket_path(args.socket)) as client:
        reply = client.request(request)
        launching = args.app_id if args.command == "launch" else None
        if launching is not None and args.wait_ready:
            ack = _checked(reply, launching)
            assert isinstance(ack, LaunchAck)
            reply = _wait_ready(client, launching, ack.session_id, args.timeout)
    reply = _checked(reply, launching)
    print(json.dumps(to_wire(reply)) if args.json else _human(reply))
    return 0


def main() -> int:
    return run_cli(main_entry)


if __name__ == "__main__":
    sys.exit(main())
