"""weft-app-shell on the host: started by the real compositor for a session appd announces, or
the standby one the compositor keeps started ahead, handed the next session.

The test app is the counter with one more inline script (allowed by its hash, like the
package's own): it clicks `+` twice once the first count arrives and mirrors the count into
document.title (the app shell logs title changes at --debug), then tries what a hostile page
would: an injected inline handler, a path climbing out of the package, a http:// navigation."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from platform_support import Env, wait_for
from shell_support import Desktop, renamed_copy

from weft.daemons import protocol
from weft.daemons.app_shell.package_files import PackageFiles

COUNTER = "org.weft.demo.counter"
CLICKER = "org.weft.test.clicker"
PROBE_SCRIPT = """
<script>
(() => {
  const count = document.getElementById("count");
  const plus = document.querySelector('[data-command="increment"]');
  let base = null;
  new MutationObserver(() => {
    const value = Number(count.textContent);
    if (Number.isNaN(value)) return;
    if (base === null) { base = value; plus.click(); plus.click(); }
    document.title = "count " + (value - base);
    if (value - base === 2) {
      document.body.insertAdjacentHTML("beforeend", '<img src="nothing.png" onerror="document.title=\\'hijacked\\'">');
      const escape = document.createElement("link");
      escape.rel = "stylesheet";
      escape.href = "..%2f..%2f..%2fetc%2fpasswd";
      document.head.append(escape);
      setTimeout(() => { location.href = "http://example.com/"; }, 300);
    }
  }).observe(count, { childList: true, characterData: true, subtree: true });
})();
</script>
"""


def clicker_package(counter: Path, target: Path) -> Path:
    package = renamed_copy(counter, target, CLICKER, "Clicker")
    page = package / "ui/index.html"
    page.write_text(page.read_text().replace("</body>", PROBE_SCRIPT + "</body>"))
    return package


@pytest.fixture(scope="module")
def desktop(tmp_path_factory: pytest.TempPathFactory, compiled_cache: Path,
            built_apps: dict[str, Path]) -> Iterator[Desktop]:
    env = Env(tmp_path_factory.mktemp("desktop"), compiled_cache)
    env.install(clicker_package(built_apps[COUNTER], tmp_path_factory.mktemp("clicker")))
    running = Desktop(env)
    yield running
    running.stop()


def test_page_ipc_reaches_the_runtime_and_the_reply_updates_the_page(desktop: Desktop) -> None:
    session_id = desktop.appd.launch(CLICKER)
    wait_for(lambda: "page title: count 2" in desktop.text(), 30, "the count to reach 2 through weftIpc")
    desktop.screenshot("counter-clicked")
    log = desktop.text()
    assert re.search(r"served weft-app://org\.weft\.test\.clicker/ui/(\.\.%2f){3}etc%2fpasswd: 404", log), log[-3000:]
    wait_for(lambda: "refused navigation to http://example.com/" in desktop.text(), 10, "the refused navigation")
    assert "page title: hijacked" not in desktop.text()  # CSP: an injected inline handler does not run
    # the session ends -> the app shell exits, and the window is gone
    desktop.appd.request(protocol.TerminateApp(session_id=session_id))
    wait_for(lambda: f"app shell of session {session_id} exited with status 0" in desktop.text(), 20,
             "the app shell to exit 0")


def test_a_launch_hands_its_session_to_the_standby_app_shell(desktop: Desktop) -> None:
    wait_for(lambda: "standby app shell started" in desktop.text(), 30, "a standby app shell")
    pid = int(re.findall(r"standby app shell started: .* \(pid (\d+)\)", desktop.text())[-1])
    session_id = desktop.appd.launch(CLICKER)
    wait_for(lambda: f"app shell for session {session_id} ({CLICKER}): the standby one, pid {pid}" in desktop.text(),
             10, "the standby app shell to take the session")
    # the page works as in a shell started for its session: weftIpc round trips move the count
    wait_for(lambda: re.search(rf"weft-app-shell\[{re.escape(CLICKER)}#{session_id}\] DEBUG page title: count 2",
                               desktop.text()), 30, "the count to reach 2 in the standby's page")
    desktop.appd.request(protocol.TerminateApp(session_id=session_id))
    wait_for(lambda: f"app shell of session {session_id} exited with status 0" in desktop.text(), 20,
             "the app shell to exit 0")


def test_files_are_served_only_from_beneath_the_package(tmp_path: Path, built_apps: dict[str, Path]) -> None:
    package = renamed_copy(built_apps[COUNTER], tmp_path, CLICKER, "Clicker")
    (tmp_path / "secret.txt").write_text("secret")
    (package / "ui/up.css").symlink_to("../../secret.txt")
    (package / "ui/abs.css").symlink_to(tmp_path / "secret.txt")
    (package / "ui/inside.css").symlink_to("index.html")
    files = PackageFiles(CLICKER, package)
    entry = files.read(files.inner_path(f"weft-app://{CLICKER}/") or "")
    assert entry is not None and entry.content_type == "text/html" and b"count" in entry.body
    for url in ("ui/up.css", "ui/abs.css", "..%2fsecret.txt", "ui/../../secret.txt", "missing.js", "ui"):
        inner = files.inner_path(f"weft-app://{CLICKER}/{url}")
        assert inner is None or files.read(inner) is None, url
    assert files.inner_path("weft-app://org.weft.demo.notes/ui/index.html") is None  # another app's origin
    inside = files.read("ui/inside.css")
    assert inside is not None and inside.content_type == "text/css"


@pytest.mark.parametrize(("args", "stdin", "message"), [
    (["../etc", "1"], "x" * 43 + "\n", "error: '../etc' is not a valid app ID"),
    ([COUNTER, "0"], "x" * 43 + "\n", "error: session id '0'"),
    ([COUNTER, "abc"], "x" * 43 + "\n", "error: session id 'abc'"),
    ([COUNTER, "1"], "", "error: no session token on stdin"),
    ([COUNTER, "1"], "not a token!\n", "error: the session token on stdin is malformed"),
    ([COUNTER], "", "error: give <app_id> <session_id> (or --standby)"),
    (["--standby", COUNTER, "1"], "", "error: --standby takes no app id or session id"),
    (["--standby"], "../etc 1 " + "x" * 43 + "\n", "error: '../etc' is not a valid app ID"),
    (["--standby"], f"{COUNTER} 0 " + "x" * 43 + "\n", "error: session id '0'"),
    (["--standby"], f"{COUNTER} 1\n", "error: a standby app shell reads one line"),
    (["--standby"], f"{COUNTER} 1 not-a-token!\n", "error: the session token on stdin is malformed"),
    (["--standby"], f"{COUNTER} 1 " + "x" * 600 + "\n", "error: the line on stdin is longer than 512 bytes"),
])
def test_bad_arguments_are_clear_errors(args: list[str], stdin: str, message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "weft.daemons.app_shell", *args], input=stdin,
                            capture_output=True, text=True, timeout=30, env={**os.environ, "WAYLAND_DISPLAY": ""})
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_standby_whose_stdin_closes_before_a_session_exits_0() -> None:
    result = subprocess.run([sys.executable, "-m", "weft.daemons.app_shell", "--standby"], input="",
                            capture_output=True, text=True, timeout=30, env={**os.environ, "WAYLAND_DISPLAY": ""})
    assert result.returncode == 0, result.stderr
    assert "stdin closed before a session came: exiting" in result.stderr
