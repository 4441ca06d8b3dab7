"""The wl_display event loop is the compositor's only loop: timers and a guard for callbacks.

Everything (Wayland clients, the IPC socket, SIGCHLD, timers) is dispatched from it, on one
thread, so no state is ever shared across threads.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from pywayland.server import EventLoop, Listener

log = logging.getLogger("weft.compositor")
P = ParamSpec("P")
R = TypeVar("R")


def guarded(function: Callable[P, R]) -> Callable[P, R | None]:
    """A callback that C calls: an exception is logged (traceback at --debug), never raised into C."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            log.error("internal error in %s: %s: %s", function.__qualname__, type(exc).__name__, exc,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            return None

    return wrapper


class Timer:
    """One re-armable timer on the event loop (a source per use would pile up in pywayland)."""

    def __init__(self, loop: EventLoop, callback: Callable[[], None]) -> None:
        self._callback = guarded(callback)
        self._source: Any = loop.add_timer(self._fire)

    def _fire(self, _data: object) -> int:
        self._callback()
        return 0

    def start(self, seconds: float) -> None:
        self._source.timer_update(max(1, round(seconds * 1000)))

    def cancel(self) -> None:
        self._source.timer_update(0)

    def remove(self) -> None:
        self._source.remove()


def connect(signal: Any, handler: Callable[[Any, Any], object]) -> Listener:
    """Listen to a wlroots/pywayland signal with a guarded handler; keep the Listener alive."""
    listener = Listener(guarded(handler))
    signal.add(listener)
    return listener
