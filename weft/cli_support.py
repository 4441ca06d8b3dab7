"""One way for every console script to report failure and progress.

Failure: `error: ...` and a non-zero exit; a traceback only with `--debug` (or WEFT_DEBUG=1),
never for an expected failure. Progress: logging, INFO and up on stderr as plain lines; with
`--debug` also DEBUG, which shows every external command as `+ cmd` (weft.proc).
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

from weft import settings
from weft.errors import WeftError
from weft.terminal import terminal_safe


def _safe_lines(text: str) -> str:
    """Messages quote package names and file names: escape controls, keep the message's own lines."""
    return "\n".join(terminal_safe(line) for line in text.split("\n"))


class ArgumentParser(argparse.ArgumentParser):
    """argparse that exits 2 with `error: ...` in our format."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(2)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="log every external command and show tracebacks on failure")


def debug_requested(args: Sequence[str]) -> bool:
    return "--debug" in args or settings.DEBUG.read()


class PlainFormatter(logging.Formatter):
    """The message alone, as a progress line; warnings and errors say what they are."""

    def format(self, record: logging.LogRecord) -> str:
        message = _safe_lines(super().format(record))
        if record.levelno >= logging.ERROR:
            return f"error: {message}"
        if record.levelno >= logging.WARNING:
            return f"warning: {message}"
        return message


class DaemonFormatter(logging.Formatter):
    """A daemon's log line, `<name> LEVEL message`, safe to read on a terminal.

    Messages quote what apps, packages and clients sent (manifest values, error texts, file
    names). Every control character is escaped, and the message's further lines (a list of
    manifest errors, a traceback) are indented, so such text can neither send the terminal an
    escape sequence nor start a log line of its own that reads like appd's."""

    def format(self, record: logging.LogRecord) -> str:
        first, *rest = super().format(record).split("\n")
        return "\n".join([terminal_safe(first), *(f"    {terminal_safe(line)}" for line in rest)])


def daemon_logging(name: str, debug: bool) -> None:
    """Replace the command's logging with the daemon's own lines on stderr (the journal)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(DaemonFormatter(f"{name} %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler], force=True)


@contextmanager
def cli_logging(debug: bool) -> Iterator[None]:
    """Log to stderr for the duration of one command (a daemon may replace this with its own
    format through `logging.basicConfig(force=True)`). Restored afterwards, so a command run
    in-process (tests) leaves no handler behind."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PlainFormatter("%(message)s"))
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def run_cli(entry: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Run `entry(argv)` with logging set up, turning WeftError into `error: ...` and the
    proper exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args)
    with cli_logging(debug):
        try:
            return int(entry(args) or 0)
        except WeftError as exc:
            if debug:
                raise
            sys.stderr.write(f"error: {_safe_lines(str(exc))}\n")
            return exc.exit_code
        except BrokenPipeError:
            return 1
        except OSError as exc:  # a file-system failure the user can act on: say which file and why
            if debug:
                raise
            sys.stderr.write(_safe_lines(f"error: {exc.filename or 'file system'}: {exc.strerror or exc}") + "\n")
            return 1
        except KeyboardInterrupt:
            sys.stderr.write("error: interrupted\n")
            return 130
