"""weft-shell on the host: the real compositor (headless) starts it, a real appd feeds it."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from platform_support import Env
from shell_support import Desktop, renamed_copy, wait_ocr

from weft.daemons import protocol

COUNTER = "org.weft.demo.counter"
NOTES = "org.weft.demo.notes"
MARKUP_ID = "org.weft.test.markup"
MARKUP_NAME = "<b>Bold</b><img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def desktop(tmp_path_factory: pytest.TempPathFactory, compiled_cache: Path,
            built_apps: dict[str, Path]) -> Iterator[Desktop]:
    env = Env(tmp_path_factory.mktemp("desktop"), compiled_cache)
    env.install(built_apps[COUNTER])
    env.install(built_apps[NOTES])
    env.install(renamed_copy(built_apps[COUNTER], tmp_path_factory.mktemp("markup"), MARKUP_ID, MARKUP_NAME))
    running = Desktop(env)
    yield running
    running.stop()


def test_launcher_lists_installed_apps_on_screen(desktop: Desktop) -> None:
    state = desktop.wait_shell_state(lambda s: {"Counter", "Notes"} <= set(s["tiles"]), what="the launcher tiles")
    assert state["connection"] == ""
    wait_ocr(desktop, "launcher", r"Counter[\s\S]*Notes|Notes[\s\S]*Counter")


def test_markup_in_an_app_name_is_text(desktop: Desktop) -> None:
    state = desktop.wait_shell_state(lambda s: MARKUP_NAME in s["tiles"], what="the markup-named tile")
    assert state["html_elements_in_launcher"] == 0
    wait_ocr(desktop, "markup-name", r"<b>Bold</b>")


def test_running_app_in_the_taskbar_and_close(desktop: Desktop) -> None:
    session_id = desktop.appd.launch(COUNTER)
    desktop.wait_shell_state(lambda s: "Counter" in s["tasks"], what="the Counter task")
    desktop.appd.request(protocol.TerminateApp(session_id=session_id))
    desktop.wait_shell_state(lambda s: "Counter" not in s["tasks"], what="the task gone")
