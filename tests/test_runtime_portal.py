"""The guest's `weft:app/files` calls against a hostile tree: errors for the guest, the session lives on,
and no portal outlives its session."""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from platform_support import Env, RuntimeUnderTest, wait_for, with_capabilities

from weft.daemons.runtime.channels import PORTAL_TIMEOUT_S
from weft.daemons.runtime.session import ExitCode


@pytest.fixture
def writer(env: Env, built_apps: dict[str, Path], tmp_path: Path,
           runtime_factory: Callable[..., RuntimeUnderTest]) -> Iterator[RuntimeUnderTest]:
    env.install(with_capabilities(built_apps["org.weft.test.probe"], tmp_path / "src", "org.weft.test.writer",
                                  ["fs:rw:app-data"]))
    runtime: RuntimeUnderTest = runtime_factory("org.weft.test.writer")
    runtime.wait_ready()
    yield runtime
    for pid in portal_pids(env):  # only left when a test failed: never leak a (stopped) portal
        os.kill(pid, signal.SIGKILL)


def data_dir(env: Env, runtime: RuntimeUnderTest) -> Path:
    """The host directory behind the guest's /data (found through a file the guest writes)."""
    assert runtime.ask("files-write:/data/good.txt:good") == "written"
    [found] = Path(env.vars["WEFT_APP_DATA"]).rglob("good.txt")
    return found.parent


def portal_pids(env: Env) -> list[int]:
    return [pid for pid in env.processes()
            if b"weft.daemons.file_portal" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] in "ZX"
    except FileNotFoundError:
        return True


def test_writing_the_data_root_is_an_error_and_the_session_continues(env: Env, writer: RuntimeUnderTest) -> None:
    assert writer.ask("files-write:/data:x") == "err: not a regular file: /data"
    assert writer.ask("files-list:/data") == ""
    assert writer.ask("files-write:/data/after.txt:y") == "written"
    assert writer.close() == ExitCode.OK


def test_a_name_that_is_not_utf8_does_not_end_the_session(env: Env, writer: RuntimeUnderTest) -> None:
    host_dir = data_dir(env, writer)
    os.close(os.open(os.fsencode(host_dir) + b"/bad-\xff", os.O_WRONLY | os.O_CREAT, 0o600))
    assert writer.ask("files-list:/data") == "good.txt"
    assert writer.ask("echo:alive") == "alive"
    assert writer.close() == ExitCode.OK


def test_a_path_too_long_for_the_portal_is_an_error_for_the_guest(env: Env, writer: RuntimeUnderTest) -> None:
    long_name = "/data/" + "d/" * 2100 + "f"  # over the portal's 4096-character path bound
    assert writer.ask(f"files-read:{long_name}") == "err: bad request: String should have at most 4096 characters"
    assert writer.ask(f"files-write:{long_name}:x") == "err: bad request: String should have at most 4096 characters"
    assert writer.ask("echo:alive") == "alive"
    assert writer.close() == ExitCode.OK


def test_a_fifo_is_refused_and_no_portal_outlives_the_session(env: Env, writer: RuntimeUnderTest) -> None:
    os.mkfifo(data_dir(env, writer) / "fifo")
    started = time.monotonic()
    assert writer.ask("files-read:/data/fifo") == "err: not a regular file: /data/fifo"
    assert writer.ask("files-write:/data/fifo:x") == "err: not a regular file: /data/fifo"
    assert time.monotonic() - started < 3
    assert writer.close() == ExitCode.OK
    assert portal_pids(env) == []


def test_a_stuck_portal_is_killed_and_replaced(env: Env, writer: RuntimeUnderTest) -> None:
    data_dir(env, writer)  # starts the portal
    [stuck] = portal_pids(env)
    os.kill(stuck, signal.SIGSTOP)
    started = time.monotonic()
    assert writer.ask("files-read:/data/good.txt") == f"err: file portal did not answer within {PORTAL_TIMEOUT_S:g} s"
    assert time.monotonic() - started < PORTAL_TIMEOUT_S + 3
    assert _gone(stuck)
    assert writer.ask("files-read:/data/good.txt") == "good"  # a fresh portal
    assert writer.close() == ExitCode.OK


def test_the_portal_dies_with_a_killed_runtime(env: Env, writer: RuntimeUnderTest) -> None:
    data_dir(env, writer)
    [portal] = portal_pids(env)
    os.kill(portal, signal.SIGSTOP)  # stuck, so only the parent-death signal can end it
    writer.process.kill()
    writer.process.wait()
    wait_for(lambda: _gone(portal), timeout=5, what="the portal to die with its runtime")
