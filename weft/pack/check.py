"""`weft-pack check`: a package is its manifest plus the files the manifest names."""
from __future__ import annotations

import os
from pathlib import Path

from weft.errors import WeftError
from weft.manifest import WASM_MAGIC, Manifest, ManifestError, load_manifest, resolve_inside
from weft.pack.tree import walk_package


def check_package(package_dir: str | os.PathLike[str]) -> Manifest:
    """Return the manifest of a valid package; otherwise ManifestError listing every problem."""
    manifest = load_manifest(package_dir)
    problems: list[str] = []
    module = _inner_file(package_dir, "runtime.module", manifest.runtime.module, problems)
    if module is not None:
        with open(module, "rb") as fh:
            if fh.read(len(WASM_MAGIC)) != WASM_MAGIC:
                problems.append(f"runtime.module '{manifest.runtime.module}' is not a valid Wasm module "
                                f"(bad magic bytes)")
    _inner_file(package_dir, "ui.entry", manifest.ui.entry, problems)
    try:
        for _file in walk_package(package_dir):
            pass  # the walk itself checks every entry
    except WeftError as exc:
        problems.append(str(exc))
    if problems:
        raise ManifestError(problems)
    return manifest


def _inner_file(package_dir: str | os.PathLike[str], field: str, inner: str, problems: list[str]) -> Path | None:
    try:
        path = resolve_inside(package_dir, inner)
    except WeftError as exc:
        problems.append(f"{field}: {exc}")
        return None
    if not path.is_file():
        problems.append(f"{field} '{inner}' not found")
        return None
    return path
