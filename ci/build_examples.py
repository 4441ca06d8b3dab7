#!/usr/bin/env python3
"""Build app components from source, reproducibly, with tools from PyPI only.

    python ci/build_examples.py                 # examples/<id>/app.wasm for both demo apps
    python ci/build_examples.py --out DIR SRC…  # complete packages DIR/<app_id>/ from app sources

An app source directory holds `wapp.toml`, `ui/` and either `app.wat` (wrapped into a
component of world `ipc-app` by `wasm-tools component embed/new`) or `app.py` (a Python
guest of world `app`, built by `componentize-py`). Builds are cached under
`.cache/weft-guests/` keyed by the sha256 of the sources, the WIT and the tool versions,
so tests and CI rebuild only what changed.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WIT_DIR = REPO / "weft/daemons/runtime/wit"
EXAMPLES = [REPO / "examples/org.weft.demo.counter", REPO / "examples/org.weft.demo.notes"]
CACHE = REPO / ".cache/weft-guests"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        sys.exit(f"error: {name} not found beside {sys.executable}; run `bash ci/setup.sh` first")
    return str(path)


def _version(tool: str) -> bytes:
    return subprocess.run([tool, "--version"], check=True, capture_output=True).stdout


def _source_key(src: Path, tool: str) -> str:
    digest = hashlib.sha256(_version(tool))
    for path in [*sorted(WIT_DIR.glob("*.wit")), *(src / n for n in ("app.wat", "app.py") if (src / n).exists())]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:32]


def _compile(src: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if (src / "app.wat").exists():
            wasm_tools = _tool("wasm-tools")
            core = Path(tmp) / "core.wasm"
            subprocess.run([wasm_tools, "component", "embed", str(WIT_DIR), "--world", "ipc-app",
                            str(src / "app.wat"), "-o", str(core)], check=True)
            subprocess.run([wasm_tools, "component", "new", str(core), "-o", str(out)], check=True)
            subprocess.run([wasm_tools, "validate", str(out)], check=True)
        elif (src / "app.py").exists():
            shutil.copy2(src / "app.py", tmp)  # build from a copy: no __pycache__ in the source tree
            subprocess.run([_tool("componentize-py"), "-d", str(WIT_DIR), "-w", "app", "componentize",
                            "app", "-o", str(out)], check=True, cwd=tmp, stdout=subprocess.DEVNULL)
        else:
            sys.exit(f"error: {src} has neither app.wat nor app.py")


def build_component(src: Path) -> Path:
    """The component built from `src`, from the cache when the sources are unchanged."""
    src = src.resolve()
    tool = _tool("wasm-tools") if (src / "app.wat").exists() else _tool("componentize-py")
    cached = CACHE / f"{src.name}-{_source_key(src, tool)}.wasm"
    if not cached.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        _compile(src, partial)
        partial.replace(cached)
    return cached


def build_package(src: Path, out_root: Path) -> Path:
    """A complete package directory `out_root/<dir name>/`: manifest, UI and component."""
    target = out_root / src.name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    shutil.copy2(src / "wapp.toml", target / "wapp.toml")
    shutil.copytree(src / "ui", target / "ui")
    shutil.copy2(build_component(src), target / "app.wasm")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write complete packages here instead of in place")
    parser.add_argument("sources", nargs="*", type=Path, help="app source dirs (default: both examples)")
    args = parser.parse_args()
    for src in args.sources or EXAMPLES:
        if args.out:
            built = build_package(src, args.out) / "app.wasm"
        else:
            built = src / "app.wasm"
            shutil.copy2(build_component(src), built)
        digest = hashlib.sha256(built.read_bytes()).hexdigest()
        print(f"{built}  sha256={digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
