"""appd's tokens: session and boot tokens are compared in constant time (hmac.compare_digest)."""
from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.server import ServerProtocol

from weft.daemons.appd import tokens, websocket
from weft.daemons.appd.hub import Hub
from weft.daemons.appd.sessions import Session, SessionManager
from weft.daemons.appd.websocket import WebSocketServer
from weft.daemons.protocol import SessionState


@pytest.fixture
def compared(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every (presented, expected) pair that went through hmac.compare_digest."""
    calls: list[tuple[bytes, bytes]] = []
    real: Callable[[bytes, bytes], bool] = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    return calls


def _manager_with(*sessions: Session) -> SessionManager:
    manager = SessionManager(cast(Any, None), cast(Any, None), Hub(), cast(Any, None))
    for session in sessions:
        manager.sessions[session.id] = session
    return manager


def test_session_tokens_are_compared_in_constant_time(compared: list[tuple[bytes, bytes]]) -> None:
    first, second = Session(1, "org.weft.demo.counter"), Session(2, "org.weft.demo.notes")
    second.state = SessionState.RUNNING
    manager = _manager_with(first, second)
    assert manager.by_token(second.token) is second
    assert (second.token.encode(), second.token.encode()) in compared
    wrong = second.token[:-1]
    assert manager.by_token(wrong) is None
    # every live session's token was compared, each with compare_digest (only ours: other threads
    # of the test process may call compare_digest too)
    assert sorted(c for c in compared if c[0] == wrong.encode()) == sorted(
        [(wrong.encode(), first.token.encode()), (wrong.encode(), second.token.encode())])


def test_a_stopped_sessions_token_is_refused() -> None:
    session = Session(1, "org.weft.demo.counter")
    session.state = SessionState.STOPPED
    assert _manager_with(session).by_token(session.token) is None


def test_boot_token_is_compared_in_constant_time(compared: list[tuple[bytes, bytes]]) -> None:
    boot = tokens.new_session_token()
    server = WebSocketServer(0, boot, frozenset(), _manager_with(), Hub(), cast(Any, None))

    async def admit(token: str) -> int | None:
        connection = websocket._Connection(server.pending, ServerProtocol(), cast(Any, None))
        response = server._admit(connection, Request(f"/appd?token={token}", Headers()))
        return None if response is None else response.status_code

    assert asyncio.run(admit(boot)) is None  # admitted as a control connection
    assert (boot.encode(), boot.encode()) in compared
    wrong = "x" + boot[1:]
    assert asyncio.run(admit(wrong)) == HTTPStatus.UNAUTHORIZED
    assert (wrong.encode(), boot.encode()) in compared
