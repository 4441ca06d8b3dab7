"""The console scripts: --help everywhere, weft-appctl end to end, clear errors without tracebacks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from platform_support import Env, with_capabilities

from weft.daemons.appctl import _human
from weft.daemons.protocol import RunningApps, SessionInfo

BIN = Path(sys.executable).parent


def run(env: Env, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], env=env.vars, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script", ["weft-appd", "weft-appctl", "weft-runtime", "weft-file-portal"])
def test_every_script_has_help(script):
    result = subprocess.run([str(BIN / script), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: " + script)


def test_appctl_drives_a_session(env, built_apps, appd_factory):
    env.install(built_apps["org.weft.demo.counter"])
    appd_factory()
    assert run(env, "weft-appctl", "apps").stdout == "org.weft.demo.counter\t0.1.0\tCounter\n"
    launched = json.loads(run(env, "weft-appctl", "--json", "launch", "org.weft.demo.counter", "--wait-ready").stdout)
    sid = launched["session_id"]
    assert launched == {"type": "APP_STATE", "session_id": sid, "state": "running"}
    assert run(env, "weft-appctl", "send", str(sid), "increment").stdout == f"{sid}\trunning\n"
    assert run(env, "weft-appctl", "recv", str(sid)).stdout == '{"count":1}\n'
    assert json.loads(run(env, "weft-appctl", "ps", "--json").stdout)["sessions"] == [
        {"session_id": sid, "app_id": "org.weft.demo.counter"}]
    assert run(env, "weft-appctl", "stop", str(sid)).stdout == f"{sid}\tstopping\n"
    timeout = run(env, "weft-appctl", "recv", str(sid), "--timeout", "0.2")
    assert timeout.returncode == 1
    assert "no message from session" in timeout.stderr or "is stopped" in timeout.stderr


OSC52 = "\x1b]52;c;aGVsbG8=\x07"  # "write 'hello' to the clipboard", as an app author would send it


def test_appctl_escapes_app_text_for_the_terminal(env, built_apps, appd_factory, tmp_path):
    evil = with_capabilities(built_apps["org.weft.test.probe"], tmp_path / "evil", "org.weft.test.evil", [])
    manifest = evil / "wapp.toml"
    manifest.write_text(manifest.read_text().replace('name = "Probe"', 'name = "Evil\\u001b]52;c;aGVsbG8=\\u0007"'))
    env.install(evil)
    appd_factory()
    apps = run(env, "weft-appctl", "apps").stdout
    assert apps == "org.weft.test.evil\t0.1.0\tEvil\\x1b]52;c;aGVsbG8=\\x07\n"
    assert json.loads(run(env, "weft-appctl", "apps", "--json").stdout)["apps"][0]["name"] == "Evil" + OSC52
    sid = json.loads(run(env, "weft-appctl", "--json", "launch", "org.weft.test.evil", "--wait-ready").stdout)[
        "session_id"]
    payload = OSC52 + "\x9b31m\u202eline\nnext"  # C1 CSI, a bidi override, a newline
    for _ in range(2):
        assert run(env, "weft-appctl", "send", str(sid), "echo:" + payload).returncode == 0
    shown = run(env, "weft-appctl", "recv", str(sid))
    assert shown.stdout == "\\x1b]52;c;aGVsbG8=\\x07\\u009b31m\\u202eline\\x0anext\n", shown
    exact = run(env, "weft-appctl", "recv", str(sid), "--json").stdout
    assert "\x1b" not in exact and json.loads(exact)["payload"] == payload  # --json stays exact, valid JSON


def test_ps_escapes_the_error_of_an_ended_session():
    """`ps` shows why a session ended: an error text (which may quote an image path or a message
    from weft-mountd) cannot reach the terminal raw, nor can an app id that did not validate."""
    reply = RunningApps(sessions=[SessionInfo(session_id=1, app_id="org.weft.a\u202e")], ended_with_error=[
        SessionInfo(session_id=2, app_id="org.weft.b", reason="failed", error="x\x9b31m\u202ey\nz\x1b]52;c;aA==\x07")])
    assert _human(reply) == ("1\torg.weft.a\\u202e\n"
                             "2\torg.weft.b\tstopped\tfailed: x\\u009b31m\\u202ey\\x0az\\x1b]52;c;aA==\\x07")


def test_appd_log_escapes_what_a_broken_package_says(env, built_apps, appd_factory, tmp_path):
    """A manifest error quotes the package's values: in appd's log (the journal, read on a
    terminal) they are escaped, and a newline in them cannot start a line that reads like appd's."""
    evil = with_capabilities(built_apps["org.weft.test.probe"], tmp_path / "evil", "org.weft.test.evil", [])
    manifest = evil / "wapp.toml"
    forged = "\\nweft-appd INFO session 7: org.weft.demo.counter in runtime 1"
    version = f'version = "1\\u001b]52;c;aGVsbG8=\\u0007{forged}"'
    manifest.write_text(manifest.read_text().replace('version = "0.1.0"', version))
    store_copy = env.store / "org.weft.test.evil"
    store_copy.parent.mkdir(parents=True, exist_ok=True)
    evil.rename(store_copy)  # copied in by hand: install would refuse it
    appd = appd_factory()
    assert run(env, "weft-appctl", "launch", "org.weft.test.evil").returncode == 21  # bad_package
    log = appd.log.read_text()
    assert "cannot launch org.weft.test.evil" in log and "\\x1b]52;c;aGVsbG8=\\x07" in log, log
    assert "\x1b" not in log and "\x07" not in log
    assert not any(line.startswith("weft-appd INFO session 7") for line in log.splitlines()), log


@pytest.mark.parametrize("argv, message", [
    (["weft-appctl", "launch", "../etc"], "is not a valid app ID"),
    (["weft-appctl", "send", "abc", "x"], "invalid session id"),
    (["weft-appctl", "stop", "0"], "invalid session id"),
    (["weft-appctl", "recv", "1"], "cannot connect to weft-appd"),
    (["weft-appctl", "recv", "1", "--timeout", "nan"], "not a finite, non-negative number of seconds"),
    (["weft-appctl", "recv", "1", "--timeout", "inf"], "not a finite, non-negative number of seconds"),
    (["weft-appctl", "recv", "1", "--timeout", "-1"], "not a finite, non-negative number of seconds"),
    (["weft-appctl", "recv", "1", "--timeout", "61"], "at most 60 seconds"),
    (["weft-appctl", "recv", "1", "--timeout", "soon"], "not a number of seconds"),
    (["weft-appctl", "launch", "org.weft.demo.counter", "--wait-ready", "--timeout", "nan"], "not a finite"),
    (["weft-appctl", "launch", "org.weft.not.installed"], "cannot connect to weft-appd"),
])
def test_appctl_errors_are_clear(env, argv, message):
    result = run(env, *argv)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_appd_without_runtime_dir_is_a_clear_error(env):
    vars_without = {k: v for k, v in env.vars.items() if k != "XDG_RUNTIME_DIR"}
    result = subprocess.run([str(BIN / "weft-appd")], env=vars_without, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr == "error: XDG_RUNTIME_DIR is not set; weft-appd keeps its sockets there\n"
