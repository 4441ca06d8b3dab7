"""The example apps, built from source, behave as documented (reference §9 with its bugs fixed)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from platform_support import APP_SOURCES

from weft.daemons.protocol import TerminateApp
from weft.image import guests


def test_counter_commands(env, built_apps, runtime_factory):
    env.install(built_apps["org.weft.demo.counter"])
    runtime = runtime_factory("org.weft.demo.counter")
    runtime.wait_ready()
    answers = [runtime.ask(c) for c in ("get", "decrement", "decrement", " increment\n", "reset", "increment", "nope")]
    assert answers == ['{"count":0}', '{"count":-1}', '{"count":-2}', '{"count":-1}', '{"count":0}',
                       '{"count":1}', '{"error":"unknown command"}']
    for _ in range(1234):
        runtime.send("increment")
    replies = [runtime.next() for _ in range(1234)]
    assert replies[-1].payload == '{"count":1235}'


def test_notes_save_and_load_any_text_under_app_data(env, built_apps, appd_factory):
    env.install(built_apps["org.weft.demo.notes"])
    appd = appd_factory()
    sid = appd.launch("org.weft.demo.notes")
    assert json.loads(appd.roundtrip(sid, json.dumps({"op": "load"}))) == {"text": ""}
    text = 'line one\nliteral \\n stays\n"quoted"\ttab\x01ctrl ünïcødé ✓'
    assert json.loads(appd.roundtrip(sid, json.dumps({"op": "save", "text": text, "rev": 5}))) == {"saved": 5}
    note = Path(env.vars["WEFT_APP_DATA"]) / "org.weft.demo.notes/unsigned/notes.txt"  # installed unsigned
    assert note.read_text(encoding="utf-8") == text
    assert not list((env.store / "org.weft.demo.notes").rglob("notes.txt"))  # not inside the package

    appd.request(TerminateApp(session_id=sid))
    again = appd.launch("org.weft.demo.notes")
    assert json.loads(appd.roundtrip(again, json.dumps({"op": "load"}))) == {"text": text}
    assert "error" in json.loads(appd.roundtrip(again, "save:old style"))
    assert json.loads(appd.roundtrip(again, json.dumps({"op": "erase"}))) == {"error": "unknown request"}


def test_ui_pages_speak_the_appd_protocol():
    for app_id in ("org.weft.demo.counter", "org.weft.demo.notes"):
        page = (APP_SOURCES[app_id] / "ui/index.html").read_text()
        # The reference pages sent bare strings, which appd dropped; these wrap every message.
        sends = re.findall(r"weftIpc\.send\((.*?)\);", page, re.S)
        assert sends and all("IPC_FORWARD" in s and "window.weftSessionId" in s for s in sends), app_id
        assert 'message.type !== "IPC_MESSAGE"' in page


def test_wat_component_build_is_reproducible(tmp_path):
    first, second = tmp_path / "a.wasm", tmp_path / "b.wasm"
    guests.compile_component(APP_SOURCES["org.weft.demo.counter"], first)
    guests.compile_component(APP_SOURCES["org.weft.demo.counter"], second)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes()[:8] == b"\0asm\x0d\x00\x01\x00"  # a component, not a core module
