"""Writes real app package directories for tests (imported by conftest and by tests)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

WASM_COMPONENT_HEADER = b"\0asm\x0d\x00\x01\x00"  # magic + component-model layer/version
INDEX_HTML = "<!doctype html><title>Notes</title><h1>Notes</h1>\n"


def write_package(directory: Path, *, app_id: str = "com.example.notes", version: str = "1.0.0",
                  name: str = "Notes", capabilities: Iterable[str] = ("fs:rw:app-data",),
                  files: Mapping[str, bytes] | None = None) -> Path:
    """Create a valid package in `directory` (manifest, app.wasm, ui/index.html, extra files)."""
    directory.mkdir(parents=True, exist_ok=True)
    caps = ", ".join(f'"{c}"' for c in capabilities)
    (directory / "wapp.toml").write_text(
        f'[package]\nid = "{app_id}"\nname = "{name}"\nversion = "{version}"\n'
        f'description = "A sample app"\ncapabilities = [{caps}]\n\n'
        f'[runtime]\nmodule = "app.wasm"\n\n[ui]\nentry = "ui/index.html"\n')
    (directory / "app.wasm").write_bytes(WASM_COMPONENT_HEADER + b"\0" * 56)
    (directory / "ui").mkdir(exist_ok=True)
    (directory / "ui" / "index.html").write_text(INDEX_HTML)
    for rel, content in (files or {}).items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_bytes(content)
    return directory
