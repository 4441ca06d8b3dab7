"""Small typed doors into pywlroots where it has no wrapper (or an untyped one)."""
from __future__ import annotations

from typing import Any

from wlroots import ffi, lib


def address(cdata: Any) -> int:
    """A stable key for a wlroots object (its C address)."""
    return int(ffi.cast("uintptr_t", cdata))


def set_maximized(xdg_surface: Any, maximized: bool) -> None:
    lib.wlr_xdg_toplevel_set_maximized(xdg_surface._ptr, maximized)


def keyboard_enter(seat: Any, surface: Any) -> None:
    """Keyboard focus to `surface`, with the seat's keyboard state if it has a keyboard (a
    seat without one still gets focus: wl_keyboard.enter is also what clipboard offers follow)."""
    keyboard = lib.wlr_seat_get_keyboard(seat._ptr)
    if keyboard == ffi.NULL:
        lib.wlr_seat_keyboard_notify_enter(seat._ptr, surface._ptr, ffi.NULL, 0, ffi.NULL)
    else:
        lib.wlr_seat_keyboard_notify_enter(seat._ptr, surface._ptr, keyboard.keycodes, keyboard.num_keycodes,
                                           ffi.addressof(keyboard.modifiers))
