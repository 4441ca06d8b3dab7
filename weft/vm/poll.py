"""The one way the VM harness waits: try a check until it holds or time runs out.

A check returns a value when the wait is over, None to try again, or raises to fail at once
(a failed unit, an exited QEMU). When time runs out, the check has had one last try after the
deadline, and the diagnostics (what the guest was doing) are logged and carried by the error,
so a timed-out test's log says why, not only that.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from weft.errors import WeftError

T = TypeVar("T")
log = logging.getLogger("weft.vm")


class WaitTimeout(WeftError):
    """A wait ran out of time; the message includes the diagnostics."""


def poll(check: Callable[[], T | None], *, what: str, timeout: float, interval: float = 1.0,
         diagnose: Callable[[], str] | None = None, logger: logging.Logger = log) -> T:
    """Call `check` every `interval` seconds until it returns a value (returned here); raise
    WaitTimeout, with `diagnose()`'s report, when it has not after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        last_try = time.monotonic() >= deadline
        result = check()
        if result is not None:
            return result
        if last_try:
            break
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))
    report = _diagnostics(diagnose)
    logger.error("timed out after %g s waiting for %s%s", timeout, what, report)
    raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}{report}")


def _diagnostics(diagnose: Callable[[], str] | None) -> str:
    if diagnose is None:
        return ""
    try:
        text = diagnose().rstrip()
    except Exception as exc:  # noqa: BLE001 - the guest may be what is broken; say so rather than hide the timeout
        text = f"(no diagnostics: {exc})"
    return f"\n{text}" if text else ""
