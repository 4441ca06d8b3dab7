"""App components built from source, reproducibly, with tools from PyPI only.

An app source directory holds `wapp.toml`, `ui/` and either `app.wat` (wrapped into a
component of world `ipc-app` by `wasm-tools component embed/new`) or `app.py` (a Python
guest of world `app`, built by `componentize-py`). Builds are cached in a directory the
caller names, keyed by the sha256 of the sources, the WIT and the tool version, so tests,
CI and the image build rebuild only what changed. Used by `ci/build_examples.py`, the tests
and `weft image build` (which ships the example apps).
"""
from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

from weft.errors import WeftError
from weft.proc import run

WIT_DIR = Path(__file__).resolve().parent.parent / "daemons/runtime/wit"
BUILD_TIMEOUT_S = 900


def repo_cache(repo: Path) -> Path:
    """The build cache of a source checkout (git-ignored)."""
    return repo / ".cache" / "weft-guests"


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise WeftError(f"{name} not found beside {sys.executable}; run `bash ci/setup.sh` first")
    return str(path)


def _source_key(src: Path, tool: str) -> str:
    digest = hashlib.sha256(run([tool, "--version"]).stdout)
    for path in [*sorted(WIT_DIR.glob("*.wit")), *(src / n for n in ("app.wat", "app.py") if (src / n).exists())]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:32]


def compile_component(src: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if (src / "app.wat").exists():
            wasm_tools = _tool("wasm-tools")
            core = Path(tmp) / "core.wasm"
            run([wasm_tools, "component", "embed", WIT_DIR, "--world", "ipc-app", src / "app.wat", "-o", core],
                timeout=BUILD_TIMEOUT_S)
            run([wasm_tools, "component", "new", core, "-o", out], timeout=BUILD_TIMEOUT_S)
            run([wasm_tools, "validate", out], timeout=BUILD_TIMEOUT_S)
        elif (src / "app.py").exists():
            shutil.copy2(src / "app.py", tmp)  # build from a copy: no __pycache__ in the source tree
            run([_tool("componentize-py"), "-d", WIT_DIR, "-w", "app", "componentize", "app", "-o", out],
                cwd=tmp, timeout=BUILD_TIMEOUT_S)
        else:
            raise WeftError(f"{src} has neither app.wat nor app.py")


def build_component(src: Path, cache: Path) -> Path:
    """The component built from `src`, from `cache` when the sources are unchanged."""
    src = src.resolve()
    tool = _tool("wasm-tools") if (src / "app.wat").exists() else _tool("componentize-py")
    cached = cache / f"{src.name}-{_source_key(src, tool)}.wasm"
    if not cached.exists():
        cache.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        compile_component(src, partial)
        partial.replace(cached)
    return cached


def build_package(src: Path, out_root: Path, cache: Path) -> Path:
    """A complete package directory `out_root/<dir name>/`: manifest, UI and component."""
    target = out_root / src.name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copy2(src / "wapp.toml", target / "wapp.toml")
    shutil.copytree(src / "ui", target / "ui")
    shutil.copy2(build_component(src, cache), target / "app.wasm")
    return target
