"""org.weft.demo.notes: one text note, kept in the app's private data directory.

Messages are JSON both ways. Requests: {"op": "load"} or {"op": "save", "text": str, "rev": int}.
Replies: {"text": str} for load, {"saved": rev} for save, {"error": str} on failure. The reply
to a save carries the UI's revision number, so the UI can tell a late reply from a current one.
The note lives at /data/notes.txt: /data is the `fs:rw:app-data` preopen.
"""
import json
import os

import wit_world
from wit_world.imports import ipc, notify

NOTES_PATH = "/data/notes.txt"


def load() -> dict:
    try:
        with open(NOTES_PATH, encoding="utf-8") as fh:
            return {"text": fh.read()}
    except FileNotFoundError:
        return {"text": ""}


def save(text: str, rev: int) -> dict:
    # Write beside the note, then rename: a crash never leaves half a note behind.
    partial = NOTES_PATH + ".partial"
    with open(partial, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(partial, NOTES_PATH)
    return {"saved": rev}


def handle(message: str) -> dict:
    try:
        request = json.loads(message)
        if not isinstance(request, dict):
            return {"error": "expected a JSON object"}
        if request.get("op") == "load":
            return load()
        if request.get("op") == "save" and isinstance(request.get("text"), str):
            return save(request["text"], int(request.get("rev", 0)))
        return {"error": "unknown request"}
    except (ValueError, OSError) as exc:
        return {"error": str(exc)}


class WitWorld(wit_world.WitWorld):
    def run(self) -> None:
        notify.ready()
        while (message := ipc.recv()) is not None:
            ipc.send(json.dumps(handle(message)))
