"""The desktop as a person meets it: after boot the system UI is on the screen (read by OCR),
clicking Counter in the launcher opens its window, clicking its + changes the number shown,
and closing the window (Alt+F4) ends the session. Screenshots go to test-artifacts/vm/."""
from __future__ import annotations

import json
from pathlib import Path

from vm_support import AS_WEFT

from weft.vm.machine import Machine
from weft.vm.poll import poll

COUNTER = "org.weft.demo.counter"
UI_TIMEOUT_S = 300  # WebKit under TCG: the shell's first page takes tens of seconds


def sessions(machine: Machine) -> list[dict[str, object]]:
    reply = json.loads(machine.succeed(f"{AS_WEFT} weft-appctl --json ps"))
    listed: list[dict[str, object]] = reply["sessions"]
    return listed


def stop_every_session(machine: Machine) -> None:
    """Earlier tests may have left apps running; their windows would cover the launcher."""
    for session in sessions(machine):
        machine.succeed(f"{AS_WEFT} weft-appctl stop {session['session_id']}")
    poll(lambda: True if not sessions(machine) else None, what="every session to end", timeout=120)


def test_counter_from_the_launcher_counts_and_closes(machine: Machine, artifacts: Path) -> None:
    machine.wait_for_unit("weft-compositor.service")
    stop_every_session(machine)

    # The system UI: the launcher lists the shipped apps, the taskbar has a clock.
    machine.wait_for_text(r"Counter", timeout=UI_TIMEOUT_S)
    machine.wait_for_text(r"Notes", timeout=60)
    machine.screenshot(artifacts / "desktop-launcher.png")

    machine.click_word("Counter")
    poll(lambda: next((s for s in sessions(machine) if s["app_id"] == COUNTER), None),
         what="a Counter session", timeout=120)
    reset = machine.find_word("Reset", timeout=UI_TIMEOUT_S)
    # The count is the large number just above the −/Reset/+ row (examples/org.weft.demo.counter/ui).
    count_box = (reset.left - 200, reset.top - 170, reset.left + reset.width + 200, reset.top - 10)
    before = poll(lambda: machine.screen_number(count_box), what="the count on the screen", timeout=120, interval=2)
    machine.screenshot(artifacts / "desktop-counter.png")

    machine.click_word(r"\+", timeout=60)
    poll(lambda: True if machine.screen_number(count_box) == before + 1 else None,
         what=f"the count to go from {before} to {before + 1}", timeout=120, interval=2)
    machine.screenshot(artifacts / "desktop-counter-plus.png")

    # Closing the window ends the session, and the launcher is back.
    machine.send_key("alt-f4")
    poll(lambda: True if not any(s["app_id"] == COUNTER for s in sessions(machine)) else None,
         what="the Counter session to end after its window closed", timeout=120)
    machine.wait_for_text(r"Notes", timeout=120)
    machine.screenshot(artifacts / "desktop-closed.png")
