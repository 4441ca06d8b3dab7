"""The session supervisor: an exception it does not expect still ends the session visibly.

Before: anything outside the handled exceptions (a bug in appd, a runtime message nobody
planned for) tore the session down with nothing in the log, and APP_STATE said stopped with
no error, as if the app had been closed on request.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, cast

import pytest

from weft.daemons.appd.app_source import PackageRoot
from weft.daemons.appd.config import AppdConfig
from weft.daemons.appd.hub import Hub
from weft.daemons.appd.sessions import SessionManager
from weft.daemons.protocol import EndReason, SessionState
from weft.daemons.relay import Ipc, Launch, Ready

APP = "org.weft.demo.counter"


class BrokenRuntime:
    """A runtime that says READY, then hands appd something that makes it raise."""

    pid = 4242

    def __init__(self, failure: Exception) -> None:
        self.failure = failure
        self.sent: list[Launch | Ipc] = []
        self.messages = 0
        self.stopped = False

    def send(self, message: Launch | Ipc) -> None:
        self.sent.append(message)

    async def next_message(self) -> Ready | Ipc | None:
        self.messages += 1
        if self.messages == 1:
            return Ready()
        raise self.failure

    async def stop(self, grace_s: float) -> int:
        self.stopped = True
        return -15  # killed by the teardown's SIGTERM: the failure above stays the session's error


class OnePool:
    def __init__(self, runtime: BrokenRuntime) -> None:
        self.runtime = runtime

    async def take(self, session_id: int) -> BrokenRuntime:
        return self.runtime


class HeldPackages:
    def __init__(self) -> None:
        self.released: list[str] = []

    async def corruption(self, package: PackageRoot) -> str | None:
        return None

    async def release(self, package: PackageRoot) -> None:
        self.released.append(package.app_id)


def _config(tmp_path: Path) -> AppdConfig:
    return AppdConfig.from_env({"HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)})


def test_an_unexpected_exception_is_logged_once_and_the_session_ends_failed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    runtime, source = BrokenRuntime(KeyError("injected")), HeldPackages()
    manager = SessionManager(_config(tmp_path), cast(Any, OnePool(runtime)), Hub(), cast(Any, source))
    package = PackageRoot(app_id=APP, path=tmp_path, publisher="unsigned", origin=str(tmp_path))

    async def run() -> None:
        session = manager.launch(package)
        assert session.task is not None
        await session.task  # the supervisor itself does not raise: the session carries the failure

    with caplog.at_level(logging.ERROR, logger="weft.appd"):
        asyncio.run(run())

    session = manager.sessions[1]
    assert session.state == SessionState.STOPPED
    assert session.end_reason == EndReason.FAILED
    assert session.error is not None and "KeyError" in session.error and "injected" in session.error
    state = session.app_state()
    assert state.reason == "failed" and state.error == session.error
    assert runtime.stopped and source.released == [APP]  # the teardown still ran
    logged = [(r.getMessage(), r.exc_info[1]) for r in caplog.records if r.exc_info is not None]
    assert len(logged) == 1
    message, exception = logged[0]
    assert "session 1" in message and APP in message and isinstance(exception, KeyError)
