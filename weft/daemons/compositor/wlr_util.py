"""Small typed doors into pywlroots where it has no wrapper (or an untyped one)."""
from __future__ import annotations

import ctypes
from typing import Any

from wlroots import ffi, lib

# pywlroots 0.15 declares no wlr_scene_node_destroy: it is called in the libwlroots its module
# is linked against (already loaded, so the same instance).
_libwlroots = ctypes.CDLL("libwlroots.so.10")
_libwlroots.wlr_scene_node_destroy.argtypes = [ctypes.c_void_p]
_libwlroots.wlr_scene_node_destroy.restype = None


def address(cdata: Any) -> int:
    """A stable key for a wlroots object (its C address)."""
    return int(ffi.cast("uintptr_t", cdata))


def destroy_scene_node(node: Any) -> None:
    """Remove a node (and its children) from the scene at once."""
    _libwlroots.wlr_scene_node_destroy(address(node._ptr))


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
