"""The `weftIpc` bridge of one session: page ⇄ this process ⇄ weft-appd. No GTK here.

The page's `weftIpc.send(m)` arrives as JSON text. `m` may be what the example UIs send, a
request `{type: "IPC_FORWARD", session_id, payload}`, or a bare string (sent as the payload):
either way it leaves as `IPC_FORWARD` for this session and no other (appd enforces the same on
the session-bound connection). `QUERY_APP_STATE` for this session is allowed too; anything
else is answered with an `ERROR` to the page. Requests made before the connection is up wait
(at most MAX_WAITING). To the page go this session's `IPC_MESSAGE`s and appd's `ERROR`s, as the
example UIs expect them (`{type, session_id, payload}`); `APP_STATE` stopped ends the shell.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from weft.daemons import protocol
from weft.daemons.protocol import Error, ErrorCode, Message, ProtocolError, to_wire

log = logging.getLogger("weft.app_shell")

MAX_WAITING = 256
PAGE_REQUESTS = frozenset({"IPC_FORWARD", "QUERY_APP_STATE"})


class SessionBridge:
    def __init__(self, session_id: int, to_page: Callable[[str], None],
                 to_appd: Callable[[dict[str, Any]], bool], ended: Callable[[str], None]) -> None:
        self.session_id = session_id
        self.to_page = to_page
        self.to_appd = to_appd
        self.ended = ended
        self.connected = False
        self.waiting: list[dict[str, Any]] = []

    def _page_error(self, code: ErrorCode, message: str) -> None:
        self.to_page(protocol.encode_json(Error(code=code, message=message)))

    def request_from_page(self, text: str) -> Message | None:
        """The appd request the page's message stands for, or None (the page got an ERROR)."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            self._page_error(ErrorCode.BAD_REQUEST, "weftIpc.send: not JSON-serialisable")
            return None
        if isinstance(data, str):
            data = {"type": "IPC_FORWARD", "session_id": self.session_id, "payload": data}
        if not isinstance(data, dict) or data.get("type") not in PAGE_REQUESTS:
            self._page_error(ErrorCode.NOT_PERMITTED, "weftIpc.send: only IPC_FORWARD and QUERY_APP_STATE "
                                                      "for this session")
            return None
        if data.setdefault("session_id", self.session_id) != self.session_id:
            self._page_error(ErrorCode.NOT_PERMITTED, f"this page may only use session {self.session_id}")
            return None
        try:
            return protocol.parse_request(data)
        except ProtocolError as exc:
            self._page_error(exc.code, str(exc))
            return None

    def from_page(self, text: str) -> None:
        request = self.request_from_page(text)
        if request is None:
            return
        wire = to_wire(request)
        if self.connected and self.to_appd(wire):
            return
        if len(self.waiting) >= MAX_WAITING:
            self._page_error(ErrorCode.BUSY, "weft-appd is not reachable; message dropped")
            return
        self.waiting.append(wire)

    def appd_connected(self) -> None:
        self.connected = True
        self.to_appd(to_wire(protocol.QueryAppState(session_id=self.session_id)))  # has it ended already?
        waiting, self.waiting = self.waiting, []
        for wire in waiting:
            self.to_appd(wire)

    def appd_disconnected(self) -> None:
        self.connected = False

    def from_appd(self, data: dict[str, Any]) -> None:
        try:
            message = protocol.parse_reply(data)
        except ProtocolError as exc:
            log.debug("ignoring a message from weft-appd: %s", exc)
            return
        ours = isinstance(message, protocol.IpcMessage) and message.session_id == self.session_id
        if ours or isinstance(message, protocol.Error):
            self.to_page(protocol.encode_json(message))
        elif (isinstance(message, protocol.AppState) and message.session_id == self.session_id
              and message.state in (protocol.SessionState.STOPPED, protocol.SessionState.NOT_FOUND)):
            self.ended(f"session {self.session_id} is {message.state.value}")
