#!/usr/bin/env python3
"""Build app components from source, reproducibly, with tools from PyPI only.

    python ci/build_examples.py                 # examples/<id>/app.wasm for both demo apps
    python ci/build_examples.py --out DIR SRC…  # complete packages DIR/<app_id>/ from app sources

The build itself is weft.image.guests (also used by `weft image build`, which ships the
examples as signed images); builds are cached under `.cache/weft-guests/`.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from weft.cli_support import run_cli
from weft.image import guests

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = [REPO / "examples/org.weft.demo.counter", REPO / "examples/org.weft.demo.notes"]
CACHE = guests.repo_cache(REPO)


def build_component(src: Path) -> Path:
    return guests.build_component(src, CACHE)


def build_package(src: Path, out_root: Path) -> Path:
    return guests.build_package(src, out_root, CACHE)


def _main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write complete packages here instead of in place")
    parser.add_argument("sources", nargs="*", type=Path, help="app source dirs (default: both examples)")
    args = parser.parse_args(argv)
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
    sys.exit(run_cli(_main, sys.argv[1:]))
