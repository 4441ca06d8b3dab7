"""Guest stdout/stderr logging: rate-limited per session, with a count of what was suppressed."""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from platform_support import Env, RuntimeUnderTest, with_capabilities

from weft.daemons.runtime.guest_output import LINE_BURST, LINES_PER_S, MAX_LINE_BYTES, GuestOutput, LineBudget
from weft.daemons.runtime.session import ExitCode


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "weft.guest"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def streams(clock: FakeClock) -> tuple[GuestOutput, GuestOutput]:
    budget = LineBudget(9, clock)
    return GuestOutput(9, "stdout", budget), GuestOutput(9, "stderr", budget)


def test_a_burst_is_logged_then_lines_are_counted_not_logged(caplog: pytest.LogCaptureFixture, clock: FakeClock,
                                                             streams: tuple[GuestOutput, GuestOutput]) -> None:
    caplog.set_level(logging.INFO, logger="weft.guest")
    stdout, stderr = streams
    stdout.write(b"".join(b"line %d\n" % n for n in range(1000)))
    stderr.write(b"also suppressed\n")  # both streams share the session's budget
    assert _messages(caplog) == [f"session 9 stdout: line {n}" for n in range(LINE_BURST)]
    caplog.clear()
    clock.now += 10  # 10 s refill 200 lines' worth
    stdout.write(b"later\n")
    assert _messages(caplog) == [
        f"session 9: suppressed 801 lines of guest output (more than {LINE_BURST} at once or {LINES_PER_S:g}/s)",
        "session 9 stdout: later"]


def test_the_count_is_logged_when_the_session_ends(caplog: pytest.LogCaptureFixture,
                                                   streams: tuple[GuestOutput, GuestOutput]) -> None:
    caplog.set_level(logging.INFO, logger="weft.guest")
    stdout, stderr = streams
    stdout.write(b"x\n" * (LINE_BURST + 5) + b"no newline")
    stdout.flush()
    stderr.flush()
    assert _messages(caplog)[-1].startswith("session 9: suppressed 6 lines")


def test_long_lines_cost_more_and_are_logged_in_pieces(caplog: pytest.LogCaptureFixture,
                                                       streams: tuple[GuestOutput, GuestOutput]) -> None:
    caplog.set_level(logging.INFO, logger="weft.guest")
    stdout, _ = streams
    stdout.write(b"y" * (10 * MAX_LINE_BYTES))  # no newline at all: still logged, 4 tokens a piece
    logged = _messages(caplog)
    assert len(logged) == 10
    assert all(message == "session 9 stdout: " + "y" * MAX_LINE_BYTES for message in logged)
    stdout.write(b"z" * (100 * MAX_LINE_BYTES) + b"\n")
    assert len(_messages(caplog)) == LINE_BURST // 4


def test_control_characters_are_escaped(caplog: pytest.LogCaptureFixture,
                                        streams: tuple[GuestOutput, GuestOutput]) -> None:
    caplog.set_level(logging.INFO, logger="weft.guest")
    streams[0].write(b"\x1b]52;c;aGk=\x07 and \xff\n")
    assert _messages(caplog) == ["session 9 stdout: \\x1b]52;c;aGk=\\x07 and \ufffd"]


def test_a_guest_printing_in_a_loop_does_not_flood_the_log(env: Env, built_apps: dict[str, Path], tmp_path: Path,
                                                           runtime_factory: Callable[..., RuntimeUnderTest]) -> None:
    env.install(with_capabilities(built_apps["org.weft.test.probe"], tmp_path / "src", "org.weft.test.chatty", []))
    runtime = runtime_factory("org.weft.test.chatty", session_id=12)
    runtime.wait_ready()
    started = time.monotonic()
    assert runtime.ask("spam:20000") == "spammed"
    elapsed = time.monotonic() - started
    assert runtime.ask("echo:still answering") == "still answering"
    assert runtime.close() == ExitCode.OK
    log = runtime.log()
    logged = log.count("session 12 stdout: spam line")
    suppressed = sum(map(int, re.findall(r"session 12: suppressed (\d+) lines of guest output", log)))
    assert logged + suppressed == 20000  # every line is either logged or counted
    assert LINE_BURST <= logged <= LINE_BURST + LINES_PER_S * elapsed + 1  # the burst plus the refill
