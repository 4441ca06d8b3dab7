"""The CLI entry helper and the one way to run programs: logging, `--debug`, clean child env."""
from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from package_support import write_package

from weft.cli_support import DaemonFormatter, run_cli
from weft.errors import WeftError
from weft.proc import child_env, inherited, run, spawn

PACK = [sys.executable, "-m", "weft.pack.cli"]
COMMAND_LINE = re.compile(r"^\+ (\S*/)?mkfs\.erofs --quiet .*-U[0-9a-f-]{36} .*$", re.M)


def _pack(*argv: str, cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "WEFT_DEBUG"}
    return subprocess.run([*PACK, *argv], capture_output=True, text=True, cwd=cwd, env={**env, **(extra_env or {})},
                          timeout=120, check=False)


@pytest.fixture
def package_and_key(tmp_path: Path) -> tuple[Path, Path]:
    package = write_package(tmp_path / "pkg")
    keys = tmp_path / "keys"
    assert _pack("generate-key", str(keys), cwd=tmp_path).returncode == 0
    return package, keys / "weft-sign.key"


def test_debug_shows_every_external_command(package_and_key: tuple[Path, Path], tmp_path: Path) -> None:
    package, key = package_and_key
    proc = _pack("--debug", "build-image", str(package), "--key", str(key), "--out", str(tmp_path / "a.wapp"),
                 cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert COMMAND_LINE.search(proc.stderr), proc.stderr
    assert "build-image: mkfs.erofs" in proc.stderr  # progress is there too, as plain lines


def test_weft_debug_variable_is_the_same_as_the_flag(package_and_key: tuple[Path, Path], tmp_path: Path) -> None:
    package, key = package_and_key
    proc = _pack("build-image", str(package), "--key", str(key), "--out", str(tmp_path / "b.wapp"), cwd=tmp_path,
                 extra_env={"WEFT_DEBUG": "1"})
    assert proc.returncode == 0, proc.stderr
    assert COMMAND_LINE.search(proc.stderr), proc.stderr


def test_without_debug_only_progress_lines(package_and_key: tuple[Path, Path], tmp_path: Path) -> None:
    package, key = package_and_key
    proc = _pack("build-image", str(package), "--key", str(key), "--out", str(tmp_path / "c.wapp"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert "build-image: checking package" in lines and "build-image: mkfs.erofs" in lines
    assert not [line for line in lines if line.startswith("+ ")]


def test_run_logs_the_shell_quoted_command_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="weft.proc"):
        run(["true", "two words", "it's"])
    assert caplog.messages == ["+ true 'two words' 'it'\"'\"'s'"]


def test_children_do_not_inherit_unrelated_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEFT_UNRELATED_SECRET", "leak")
    monkeypatch.setenv("LANG", "de_DE.ISO-8859-1")
    monkeypatch.setenv("HOME", "/home/someone")
    env = _env_of(run(["env"]).stdout)
    assert "WEFT_UNRELATED_SECRET" not in env
    assert env["LANG"] == env["LC_ALL"] == "C.UTF-8"
    assert env["HOME"] == "/home/someone" and env["PATH"] == os.environ["PATH"]
    assert set(env) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL"}


def test_children_get_what_the_caller_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEFT_WANTED", "yes")
    monkeypatch.setenv("WEFT_UNWANTED", "no")
    monkeypatch.setenv("WEFTTEST_A", "a")
    monkeypatch.setenv("WEFTTEST_B", "b")
    passed = {**inherited("WEFT_WANTED", prefix="WEFTTEST_"), "EXTRA": "1"}
    assert passed == {"WEFT_WANTED": "yes", "WEFTTEST_A": "a", "WEFTTEST_B": "b", "EXTRA": "1"}
    env = _env_of(run(["env"], env=passed).stdout)
    assert env["WEFT_WANTED"] == "yes" and env["EXTRA"] == "1" and "WEFT_UNWANTED" not in env
    process = spawn(["env"], env={"ONLY": "this"}, stdout=subprocess.PIPE)
    out, _ = process.communicate(timeout=30)
    assert _env_of(out)["ONLY"] == "this" and "WEFT_UNWANTED" not in _env_of(out)


def test_child_env_without_path_falls_back_to_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATH")
    assert child_env()["PATH"] == os.defpath


def test_failing_tool_is_a_tool_error_with_its_stderr() -> None:
    with pytest.raises(WeftError, match="exit status 3\n  boom"):
        run(["sh", "-c", "echo boom >&2; exit 3"])


def _env_of(output: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.decode().splitlines())


def _entry(argv: Sequence[str]) -> int:
    log = logging.getLogger("weft.test")
    log.debug("detail")
    log.info("progress")
    log.warning("careful")
    if "fail" in argv:
        raise WeftError("it broke")
    return 0


def test_run_cli_logs_plain_lines_to_stderr(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEFT_DEBUG", raising=False)
    root = logging.getLogger()
    handlers = list(root.handlers)
    assert run_cli(_entry, []) == 0
    assert capsys.readouterr().err == "progress\nwarning: careful\n"
    assert run_cli(_entry, ["--debug"]) == 0
    assert capsys.readouterr().err == "detail\nprogress\nwarning: careful\n"
    assert root.handlers == handlers  # nothing left behind for the next command in this process


def test_run_cli_failure_is_one_error_line_and_debug_shows_the_traceback(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEFT_DEBUG", raising=False)
    assert run_cli(_entry, ["fail"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "error: it broke"
    monkeypatch.setenv("WEFT_DEBUG", "1")
    with pytest.raises(WeftError, match="it broke"):
        run_cli(_entry, ["fail"])


def test_daemon_lines_escape_controls_and_indent_further_lines() -> None:
    formatter = DaemonFormatter("weft-appd %(levelname)s %(message)s")
    value = "x\x1b]52;c;aA==\x07\nweft-appd INFO forged"
    record = logging.LogRecord("weft.appd", logging.WARNING, __file__, 1, "bad %s", (value,), None)
    assert formatter.format(record) == "weft-appd WARNING bad x\\x1b]52;c;aA==\\x07\n    weft-appd INFO forged"
    try:
        raise ValueError("boom\x9b")
    except ValueError:
        record = logging.LogRecord("weft.appd", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = formatter.format(record).split("\n")
    assert lines[0] == "weft-appd ERROR failed"
    assert all(line.startswith("    ") for line in lines[1:]) and lines[-1] == "    ValueError: boom\\u009b"
