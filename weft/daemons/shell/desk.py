"""The system shell's state and its two conversations: page ⇄ desk ⇄ weft-appd. No GTK here.

The page sends small commands (`launch`, `focus`, `close`, `ready`, `rendered`); the desk turns
them into appd requests, built and validated with weft.daemons.protocol's models. appd's
messages update the desk, which sends the page whole lists and ready-made notices (the page
only shows text). A refused launch is matched to the app it was for: appd answers requests in
order, so the oldest launch still waiting is the one an `ERROR` with code 4 (launch failed)
or 7 (busy) answers.
"""
from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from weft.daemons import protocol
from weft.daemons.protocol import ErrorCode, Message, to_wire

log = logging.getLogger("weft.shell")

PageSend = Callable[[dict[str, Any]], None]
AppdSend = Callable[[dict[str, Any]], bool]


class Desk:
    def __init__(self, to_page: PageSend, to_appd: AppdSend) -> None:
        self.to_page = to_page
        self.to_appd = to_appd
        self.connected = False
        self.status = "connecting to weft-appd…"
        self.installed: dict[str, protocol.AppInfo] = {}
        self.installed_known = False  # an empty launcher says "No apps installed" only once appd said so
        self.sessions: dict[int, str] = {}  # session id → app id (live sessions)
        self.pending_launches: deque[str] = deque()
        self.page_state: dict[str, Any] = {}  # what the page last said it shows (for --debug and tests)

    def name_of(self, app_id: str) -> str:
        info = self.installed.get(app_id)
        return info.name if info is not None and info.name else app_id

    # -- appd --------------------------------------------------------------------------------

    def appd_connected(self) -> None:
        self.connected = True
        self.status = ""
        self.pending_launches.clear()
        self._request(protocol.QueryInstalledApps())
        self._request(protocol.QueryRunning())
        self._push_status()

    def appd_disconnected(self, reason: str) -> None:
        if self.connected or not self.status.startswith("weft-appd is not reachable"):
            log.warning("weft-appd: %s", reason)
        self.connected = False
        self.status = "weft-appd is not reachable; retrying"
        self.sessions.clear()
        self.pending_launches.clear()
        self._push_status()
        self._push_running()

    def refresh_installed(self) -> None:
        if self.connected:
            self._request(protocol.QueryInstalledApps())

    def from_appd(self, data: dict[str, Any]) -> None:
        try:
            message = protocol.parse_reply(data)
        except protocol.ProtocolError as exc:
            log.debug("ignoring a message from weft-appd: %s", exc)
            return
        if isinstance(message, protocol.InstalledApps):
            self.installed = {app.app_id: app for app in message.apps}
            self.installed_known = True
            self._push_installed()
        elif isinstance(message, protocol.RunningApps):
            self.sessions = {s.session_id: s.app_id for s in message.sessions}
            self._push_running()
        elif isinstance(message, protocol.LaunchAck):
            if message.app_id in self.pending_launches:
                self.pending_launches.remove(message.app_id)
            self.sessions[message.session_id] = message.app_id
            self._push_running()
        elif isinstance(message, protocol.AppState):
            self._session_state(message)
        elif isinstance(message, protocol.Error):
            self._error(message)

    def _session_state(self, message: protocol.AppState) -> None:
        if message.state not in (protocol.SessionState.STOPPED, protocol.SessionState.NOT_FOUND):
            return
        app_id = self.sessions.pop(message.session_id, None)
        if app_id is not None and message.reason:
            self.notice(f"{self.name_of(app_id)} stopped: {message.reason}")
        self._push_running()

    def _error(self, message: protocol.Error) -> None:
        if message.code in (ErrorCode.LAUNCH_FAILED, ErrorCode.BUSY) and self.pending_launches:
            app_id = self.pending_launches.popleft()
            self.notice(f"{self.name_of(app_id)} could not start: {message.reason or message.message}")
        else:
            self.notice(f"weft-appd: {message.message}")

    # -- page --------------------------------------------------------------------------------

    def from_page(self, text: str) -> None:
        try:
            command = json.loads(text)
        except ValueError:
            log.warning("the page sent a message that is not JSON")
            return
        if not isinstance(command, dict):
            return
        kind = command.get("type")
        try:
            if kind == "ready":
                self._push_all()
            elif kind == "launch":
                self._launch(command.get("app_id"))
            elif kind == "focus":
                self._request(protocol.FocusApp.model_validate({"session_id": command.get("session_id")}))
            elif kind == "close":
                self._request(protocol.TerminateApp.model_validate({"session_id": command.get("session_id")}))
            elif kind == "rendered":
                if command != self.page_state:
                    log.debug("shell-state %s", json.dumps(command, sort_keys=True))
                self.page_state = command
            else:
                log.warning("the page sent an unknown command %r", str(kind)[:40])
        except ValidationError as exc:
            log.warning("the page sent an invalid %s command: %s", kind, exc.errors()[0]["msg"])

    def _launch(self, app_id: object) -> None:
        request = protocol.LaunchApp.model_validate({"app_id": app_id})
        if self._request(request):
            self.pending_launches.append(request.app_id)

    def notice(self, text: str) -> None:
        log.info("notice: %s", text)
        self.to_page({"kind": "notice", "text": text})

    def _request(self, message: Message) -> bool:
        if self.to_appd(to_wire(message)):
            return True
        self.notice("weft-appd is not reachable; try again in a moment")
        return False

    def _push_status(self) -> None:
        self.to_page({"kind": "status", "connected": self.connected, "text": self.status})

    def _push_running(self) -> None:
        sessions = [{"session_id": sid, "app_id": app_id, "name": self.name_of(app_id)}
                    for sid, app_id in sorted(self.sessions.items())]
        self.to_page({"kind": "running", "sessions": sessions})

    def _push_all(self) -> None:
        self._push_status()
        if self.installed_known:
            self._push_installed()
        self._push_running()

    def _push_installed(self) -> None:
        self.to_page({"kind": "installed", "apps": [to_wire(app) for app in self.installed.values()]})
