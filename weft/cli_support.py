"""One way for every console script to report failure: `error: ...` and a non-zero exit.

A traceback is shown only with `--debug` (or WEFT_DEBUG=1), never for an expected failure.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from weft.errors import WeftError


class ArgumentParser(argparse.ArgumentParser):
    """argparse that exits 2 with `error: ...` in our format."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(2)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks on failure")


def run_cli(entry: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run `entry(argv)`, turning WeftError into `error: ...` and the proper exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("WEFT_DEBUG") == "1"
    try:
        return int(entry(args) or 0)
    except WeftError as exc:
        if debug:
            raise
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except BrokenPipeError:
        return 1
    except OSError as exc:  # a file-system failure the user can act on: say which file and why
        if debug:
            raise
        sys.stderr.write(f"error: {exc.filename or 'file system'}: {exc.strerror or exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
