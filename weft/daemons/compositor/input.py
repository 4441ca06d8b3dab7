"""The seat: pointer (cursor), keyboards, compositor keybindings and gestures.

Keybindings (never passed to clients): Alt+Tab / Super+Tab switch app, Alt+F4 / Super+Q close
the focused app. They match keysyms of the keyboard's layout (xkb), so Super+Q is the key
marked Q whatever the layout.
"""
from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from typing import Any

from pywayland.protocol.wayland import WlKeyboard, WlSeat
from pywayland.server import Display, Listener
from wlroots import ffi as wlr_ffi
from wlroots.wlr_types import Cursor, OutputLayout, PointerGesturesV1, Seat
from wlroots.wlr_types.cursor import WarpMode
from wlroots.wlr_types.input_device import ButtonState, InputDevice, InputDeviceType
from wlroots.wlr_types.keyboard import KeyboardKeyEvent, KeyboardModifier
from wlroots.wlr_types.xcursor_manager import XCursorManager

from weft.daemons.compositor.loop import connect
from weft.daemons.compositor.windows import WindowManager

log = logging.getLogger("weft.compositor")
xkb: Any = importlib.import_module("xkbcommon.xkb")  # untyped: used through its cffi door only
XKB_KEY_TAB = 0xFF09
XKB_KEY_F4 = 0xFFC1
XKB_KEY_Q = (0x51, 0x71)
NAVIGATION_MIN_FINGERS = 3
NAVIGATION_MIN_DISTANCE = 100.0
CURSOR_SIZE = 24


def keysym_of(keyboard: Any, keycode: int) -> int:
    """The keysym `keycode` (evdev) produces in the keyboard's current xkb state."""
    state = xkb.ffi.cast("struct xkb_state *", int(wlr_ffi.cast("uintptr_t", keyboard._ptr.xkb_state)))
    return int(xkb.lib.xkb_state_key_get_one_sym(state, keycode + 8))


class Gesture:
    """Accumulates one touchpad gesture to decide whether it is a navigation gesture."""

    def __init__(self, kind: int, fingers: int) -> None:
        self.kind = kind  # 0 swipe, 1 pinch, 2 hold
        self.fingers = fingers
        self.dx = 0.0
        self.dy = 0.0

    def is_navigation(self) -> bool:
        if self.fingers < NAVIGATION_MIN_FINGERS:
            return False
        if self.kind == 2:
            return True
        return abs(self.dx) >= NAVIGATION_MIN_DISTANCE or abs(self.dy) >= NAVIGATION_MIN_DISTANCE


class Input:
    def __init__(self, display: Display, layout: OutputLayout, seat: Seat, windows: WindowManager,
                 navigation: Callable[[int, int, float, float], None]) -> None:
        self.seat = seat
        self.windows = windows
        self._navigation = navigation
        self.cursor = Cursor(layout)
        cursor_manager: Any = XCursorManager  # untyped constructor
        self.xcursor = cursor_manager(CURSOR_SIZE)  # $XCURSOR_THEME, else wlroots' built-in arrow
        self.gestures = PointerGesturesV1(display)
        self._gesture: Gesture | None = None
        self._keyboards: list[tuple[Any, list[Listener]]] = []
        self._listeners: list[Listener] = []
        self._has_pointer = True  # the cursor exists from the start (a mouse may come later)
        for signal, handler in (
            (self.cursor.motion_event, self._motion), (self.cursor.motion_absolute_event, self._motion_absolute),
            (self.cursor.button_event, self._button), (self.cursor.axis_event, self._axis),
            (self.cursor.frame_event, self._frame), (self.cursor.swipe_begin, self._swipe_begin),
            (self.cursor.swipe_update, self._swipe_update), (self.cursor.swipe_end, self._swipe_end),
            (self.cursor.pinch_begin, self._pinch_begin), (self.cursor.pinch_update, self._pinch_update),
            (self.cursor.pinch_end, self._pinch_end), (self.cursor.hold_begin, self._hold_begin),
            (self.cursor.hold_end, self._hold_end),
            (seat.request_set_cursor_event, self._request_cursor),
            (seat.request_set_selection_event, self._request_selection),
            (seat.request_set_primary_selection_event, self._request_primary_selection),
        ):
            self._listeners.append(connect(signal, handler))
        self._update_capabilities()

    def output_added(self, scale: float) -> None:
        """wlroots 0.15's xcursor manager shows nothing until a theme is loaded at the output's
        scale; a missing theme falls back to its built-in arrow (Debian's image ships none)."""
        theme = os.environ.get("XCURSOR_THEME") or "default"
        if self.xcursor.load(scale):
            log.info("cursor: xcursor theme %r at scale %g (wlroots' built-in arrow if not installed)", theme, scale)
        else:
            log.warning("cursor: cannot load xcursor theme %r at scale %g: no compositor cursor image", theme, scale)
        self.xcursor.set_cursor_image("left_ptr", self.cursor)

    # -- devices ----------------------------------------------------------------------------
    def add_device(self, device: InputDevice, keymap_from_client: bool = False) -> None:
        if device.device_type == InputDeviceType.POINTER:
            self.cursor.attach_input_device(device)
        elif device.device_type == InputDeviceType.KEYBOARD:
            self._add_keyboard(device, keymap_from_client)
        self._update_capabilities()

    def _add_keyboard(self, device: InputDevice, keymap_from_client: bool) -> None:
        keyboard = device.keyboard
        if not keymap_from_client:  # a virtual keyboard brings its own keymap
            context = xkb.Context()
            keyboard.set_keymap(context.keymap_new_from_names())  # XKB_DEFAULT_LAYOUT etc. apply
            keyboard.set_repeat_info(25, 600)
        listeners = [connect(keyboard.key_event, lambda _l, event: self._key(device, event)),
                     connect(keyboard.modifiers_event, lambda _l, _d: self._modifiers(device)),
                     connect(keyboard.destroy_event, lambda _l, _d: self._keyboard_gone(device))]
        self._keyboards.append((device, listeners))
        self.seat.set_keyboard(device)

    def _keyboard_gone(self, device: InputDevice) -> None:
        for kept, listeners in self._keyboards:
            if kept is device:
                for listener in listeners:
                    listener.remove()
        self._keyboards = [(d, ls) for d, ls in self._keyboards if d is not device]
        self._update_capabilities()

    def _update_capabilities(self) -> None:
        capabilities = WlSeat.capability.pointer if self._has_pointer else WlSeat.capability(0)
        if self._keyboards:
            capabilities |= WlSeat.capability.keyboard
        self.seat.set_capabilities(capabilities)

    # -- keyboard ---------------------------------------------------------------------------
    def _key(self, device: InputDevice, event: KeyboardKeyEvent) -> None:
        keyboard = device.keyboard
        if event.state == WlKeyboard.key_state.pressed and self._binding(keyboard, event.keycode):
            return
        self.seat.set_keyboard(device)
        self.seat.keyboard_notify_key(event)

    def _binding(self, keyboard: Any, keycode: int) -> bool:
        modifiers = keyboard.modifier
        alt = bool(modifiers & KeyboardModifier.ALT)
        logo = bool(modifiers & KeyboardModifier.LOGO)
        if not (alt or logo):
            return False
        sym = keysym_of(keyboard, keycode)
        if sym == XKB_KEY_TAB:
            self.windows.cycle()
            return True
        if (alt and sym == XKB_KEY_F4) or (logo and sym in XKB_KEY_Q):
            self.windows.close_focused()
            return True
        return False

    def _modifiers(self, device: InputDevice) -> None:
        self.seat.set_keyboard(device)
        self.seat.keyboard_notify_modifiers(device.keyboard.modifiers)

    # -- pointer ----------------------------------------------------------------------------
    def _motion(self, _l: Any, event: Any) -> None:
        self.cursor.move(event.delta_x, event.delta_y, input_device=event.device)
        self._pointer_moved(event.time_msec)

    def _motion_absolute(self, _l: Any, event: Any) -> None:
        self.cursor.warp(WarpMode.AbsoluteClosest, event.x, event.y, input_device=event.device)
        self._pointer_moved(event.time_msec)

    def _pointer_moved(self, time_msec: int) -> None:
        hit = self.windows.surface_at(self.cursor.x, self.cursor.y)
        if hit is None:
            self.xcursor.set_cursor_image("left_ptr", self.cursor)
            self.seat.pointer_clear_focus()
            return
        _view, surface, sx, sy = hit
        self.seat.pointer_notify_enter(surface, sx, sy)
        self.seat.pointer_notify_motion(time_msec, sx, sy)

    def _button(self, _l: Any, event: Any) -> None:
        if event.button_state == ButtonState.PRESSED:
            hit = self.windows.surface_at(self.cursor.x, self.cursor.y)
            if hit is not None:
                self.windows.focus(hit[0])  # click raises and focuses
        self.seat.pointer_notify_button(event.time_msec, event.button, event.button_state)

    def _axis(self, _l: Any, event: Any) -> None:
        self.seat.pointer_notify_axis(event.time_msec, event.orientation, event.delta, event.delta_discrete,
                                      event.source)

    def _frame(self, _l: Any, _d: Any) -> None:
        self.seat.pointer_notify_frame()

    def _request_cursor(self, _l: Any, event: Any) -> None:
        # only the client under the pointer may set its image
        if self.seat.pointer_state._ptr.focused_client == event._ptr.seat_client:
            self.cursor.set_surface(event.surface, event.hotspot)

    def _request_selection(self, _l: Any, event: Any) -> None:
        self.seat.set_selection(event._ptr.source, event.serial)

    def _request_primary_selection(self, _l: Any, event: Any) -> None:
        self.seat.set_primary_selection(event._ptr.source, event.serial)

    # -- gestures: forwarded to the client under the pointer; navigation ones to the panel --
    def _swipe_begin(self, _l: Any, event: Any) -> None:
        self._gesture = Gesture(0, event.fingers)
        self.gestures.send_swipe_begin(self.seat, event.time_msec, event.fingers)

    def _swipe_update(self, _l: Any, event: Any) -> None:
        if self._gesture is not None:
            self._gesture.dx += event.dx
            self._gesture.dy += event.dy
        self.gestures.send_swipe_update(self.seat, event.time_msec, event.dx, event.dy)

    def _swipe_end(self, _l: Any, event: Any) -> None:
        self.gestures.send_swipe_end(self.seat, event.time_msec, event.cancelled)
        self._gesture_done(event.cancelled)

    def _pinch_begin(self, _l: Any, event: Any) -> None:
        self._gesture = Gesture(1, event.fingers)
        self.gestures.send_pinch_begin(self.seat, event.time_msec, event.fingers)

    def _pinch_update(self, _l: Any, event: Any) -> None:
        if self._gesture is not None:
            self._gesture.dx += event.dx
            self._gesture.dy += event.dy
        self.gestures.send_pinch_update(self.seat, event.time_msec, event.dx, event.dy, event.scale,
                                        event.rotation)

    def _pinch_end(self, _l: Any, event: Any) -> None:
        self.gestures.send_pinch_end(self.seat, event.time_msec, event.cancelled)
        self._gesture_done(event.cancelled)

    def _hold_begin(self, _l: Any, event: Any) -> None:
        self._gesture = Gesture(2, event.fingers)
        self.gestures.send_hold_begin(self.seat, event.time_msec, event.fingers)

    def _hold_end(self, _l: Any, event: Any) -> None:
        self.gestures.send_hold_end(self.seat, event.time_msec, event.cancelled)
        self._gesture_done(event.cancelled)

    def _gesture_done(self, cancelled: bool) -> None:
        gesture, self._gesture = self._gesture, None
        if gesture is not None and not cancelled and gesture.is_navigation():
            self._navigation(gesture.kind, gesture.fingers, gesture.dx, gesture.dy)
