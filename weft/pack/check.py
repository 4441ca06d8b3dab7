"""`weft-pack check`: a package is its manifest plus the files the manifest names."""
from __future__ import annotations

import os

from weft.errors import WeftError
from weft.manifest import WASM_MAGIC, Manifest, ManifestError, load_manifest
from weft.pack.tree import PackageEntryMissing, read_inside, walk_package
from weft.terminal import terminal_safe


def check_package(package_dir: str | os.PathLike[str]) -> Manifest:
    """Return the manifest of a valid package; otherwise ManifestError listing every problem."""
    manifest = load_manifest(package_dir)
    problems: list[str] = []
    magic = _read_inner(package_dir, "runtime.module", manifest.runtime.module, len(WASM_MAGIC), problems)
    if magic is not None and magic != WASM_MAGIC:
        problems.append(f"runtime.module '{terminal_safe(manifest.runtime.module)}' is not a valid Wasm module "
                        f"(bad magic bytes)")
    _read_inner(package_dir, "ui.entry", manifest.ui.entry, 0, problems)
    try:
        for _file in walk_package(package_dir):
            pass  # the walk itself checks every entry
    except WeftError as exc:
        problems.append(str(exc))
    if problems:
        raise ManifestError(problems)
    return manifest


def _read_inner(package_dir: str | os.PathLike[str], field: str, inner: str, max_bytes: int,
                problems: list[str]) -> bytes | None:
    """The start of a file the manifest names, found the way the walk finds files: symlinks
    followed but never out of the package, loops and non-regular files refused."""
    try:
        return read_inside(package_dir, inner, max_bytes)
    except PackageEntryMissing:
        problems.append(f"{field} '{terminal_safe(inner)}' not found")
    except WeftError as exc:
        problems.append(f"{field}: {exc}")
    return None
