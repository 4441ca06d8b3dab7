"""The shells' WebSocket to weft-appd: one connection, read on its own thread, reconnected with backoff.

The shells are local programs, so they connect without an `Origin` header and present a token
in the query: weft-shell the per-boot token (a control connection), weft-app-shell its
session's token (a connection appd binds to that session). The token never reaches a page.
The per-boot token and the port are read from appd's runtime directory on every attempt (a
restarted appd may have a new port), through the same checks appd applies to it
(weft.daemons.appd.runtime_dir: ours, not a symlink, private).
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

from weft.daemons.appd.runtime_dir import RuntimeDir
from weft.daemons.protocol import MAX_FRAME_BYTES
from weft.errors import WeftError

log = logging.getLogger("weft.webshell")

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0
OPEN_TIMEOUT_S = 5.0
# websockets logs the request line at DEBUG, and the request line carries the token: never below INFO.
_FRAMES_LOG = logging.getLogger("weft.webshell.websocket")
_FRAMES_LOG.setLevel(logging.INFO)


def _read(appd_dir: Path, name: str) -> str:
    """`name` from appd's runtime directory, stripped ("" if absent), read without following links."""
    directory = RuntimeDir.open(appd_dir, create=False)
    try:
        return (directory.read_private(name) or "").strip()
    finally:
        directory.close()


def read_port(appd_dir: Path) -> int:
    text = _read(appd_dir, "appd.wsport")
    if not text.isdigit():
        raise WeftError(f"weft-appd has not written its WebSocket port in {appd_dir} (is it running?)")
    return int(text)


def read_boot_token(appd_dir: Path) -> str:
    text = _read(appd_dir, "appd.token")
    if not text:
        raise WeftError(f"no usable boot token in {appd_dir}/appd.token (is weft-appd running?)")
    return text


@dataclass(frozen=True)
class Handlers:
    """Called on the connection's thread: hand the work to the GUI thread yourself."""

    message: Callable[[dict[str, Any]], None]
    connected: Callable[[], None]
    disconnected: Callable[[str], None]
    # An HTTP refusal of the upgrade (401: the token is not, or no longer, valid). True: stop for good.
    refused: Callable[[int], bool]


class AppdSocket:
    def __init__(self, url: Callable[[], str], handlers: Handlers) -> None:
        self._url = url  # called per attempt: may raise WeftError (appd not there yet)
        self._handlers = handlers
        self._stop = threading.Event()
        self._connection: ClientConnection | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="appd-websocket", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._connection is not None:
                self._connection.close()

    def send(self, message: dict[str, Any]) -> bool:
        """Send one request; False when not connected (the caller says so to the user)."""
        with self._lock:
            connection = self._connection
        if connection is None:
            return False
        try:
            connection.send(json.dumps(message))
        except WebSocketException as exc:
            log.warning("sending to weft-appd failed: %s", exc)
            return False
        return True

    def _run(self) -> None:
        backoff = FIRST_BACKOFF_S
        while not self._stop.is_set():
            try:
                with connect(self._url(), open_timeout=OPEN_TIMEOUT_S, max_size=MAX_FRAME_BYTES,
                             compression=None, origin=None, logger=_FRAMES_LOG) as connection:
                    with self._lock:
                        self._connection = connection
                    backoff = FIRST_BACKOFF_S
                    self._handlers.connected()
                    self._read(connection)
                reason = "weft-appd closed the connection"
            except InvalidStatus as exc:
                status = exc.response.status_code
                if self._handlers.refused(status):
                    return
                reason = f"weft-appd refused the connection (HTTP {status})"
            except (OSError, WebSocketException, WeftError, TimeoutError) as exc:
                reason = f"cannot reach weft-appd: {exc}"
            finally:
                with self._lock:
                    self._connection = None
            if self._stop.is_set():
                return
            self._handlers.disconnected(reason)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _read(self, connection: ClientConnection) -> None:
        for frame in connection:
            if not isinstance(frame, str):
                continue
            try:
                message = json.loads(frame)
            except ValueError:
                log.warning("weft-appd sent a frame that is not JSON")
                continue
            if isinstance(message, dict):
                self._handlers.message(message)
