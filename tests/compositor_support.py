"""A pywayland test client for weft-compositor, usable in-process and as a script.

As a script it is the stand-in shell or app shell the compositor spawns:
    compositor_support.py --log FILE --colour RRGGBB [--zweft ROLE] [--set-selection TEXT]
                          [--print-selection] [--read-token] [--ignore-close] [--frames N]
                          [--standby [--toplevel-before-session]] [app_id session_id]
It maps one xdg toplevel filled with the colour, logs what it sees as JSON lines in FILE
(xdg configure, zweft events, keyboard enter, the selection text, the stdin token), and exits
0 when the compositor asks its toplevel to close (as an app shell does). --frames N paces N
commits without damage on frame callbacks (an animation's clock), then logs `frames_done`.
--standby connects first (logging `standby_ready`), then reads `<app_id> <session_id> <token>`
on stdin, as weft-app-shell --standby does; --toplevel-before-session also asks for a toplevel
before that line comes (the compositor must refuse it: a standby has no role).
"""
from __future__ import annotations

import argparse
import functools
import json
import mmap
import os
import select
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pywayland.client import Display
from pywayland.protocol.wayland import (
    WlCompositor,
    WlDataDevice,
    WlDataDeviceManager,
    WlSeat,
    WlShm,
)
from pywayland.protocol.xdg_shell import XdgWmBase
from pywayland.protocol_core.argument import ArgumentType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from weft.daemons.compositor.bindings import load_protocol, zweft

DATA = Path(__file__).parent / "data"
XRGB8888 = 1
SESSION_COLOURS = (0x00FFFF, 0xFF0000, 0x00FF00, 0xFFFF00, 0xFF00FF)  # --colour session: by session id


def virtual_pointer() -> Any:
    return load_protocol(DATA / "wlr-virtual-pointer-unstable-v1.xml")


def virtual_keyboard() -> Any:
    return load_protocol(DATA / "virtual-keyboard-unstable-v1.xml")


def _client_new_id_decoder(display: Display, message: Any, c_args: Any) -> list[Any]:
    """pywayland 0.4.17 cannot take an event that creates an object (wl_data_device.data_offer):
    wrap the proxy libwayland made so its own events dispatch."""
    values: list[Any] = []
    for index, argument in enumerate(message.arguments):
        if argument.argument_type == ArgumentType.NewId:
            values.append(argument.interface.proxy_class(c_args[index].o, display))
        else:
            return type(message).c_to_arguments(message, c_args)
    return values


_OPEN: list[Client] = []


def close_all() -> None:
    """Disconnect every in-process client: pywayland must destroy proxies before their display,
    which garbage collection does not promise (the test process crashed at exit)."""
    while _OPEN:
        _OPEN.pop().close()


class Client:
    def __init__(self, name: str, log: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.display = Display(name)
        self.display.connect()
        _OPEN.append(self)
        self.events: list[dict[str, Any]] = []
        self._log = log
        self.globals: dict[str, Any] = {}
        data_offer = WlDataDevice.events[0]
        data_offer.c_to_arguments = functools.partial(_client_new_id_decoder, self.display, data_offer)
        registry = self.display.get_registry()
        registry.dispatcher["global"] = self._global
        self.registry = registry
        self.display.roundtrip()
        self.keyboard_serial: int | None = None
        self.offers: dict[Any, list[str]] = {}
        self.selection: Any = None
        self.closed = False
        self.size = (0, 0)

    def close(self) -> None:
        self.display.disconnect()

    def record(self, **event: Any) -> None:
        self.events.append(event)
        if self._log is not None:
            self._log(event)

    def _global(self, registry: Any, name: int, interface: str, version: int) -> None:
        self.globals[interface] = (name, version)

    def bind(self, interface: Any, version: int = 1) -> Any:
        name, available = self.globals[interface.name]
        return self.registry.bind(name, interface, min(version, available))

    def dispatch(self, timeout: float = 0.1) -> None:
        self.display.flush()
        ready, _, _ = select.select([self.display.get_fd()], [], [], timeout)
        if ready:
            self.display.dispatch(block=True)
        self.display.dispatch(block=False)
        self.display.flush()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "an event") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} within {timeout} s; events: {self.events}")
            self.dispatch()

    # -- a window of one colour -------------------------------------------------------------
    def toplevel(self, colour: int, title: str = "test") -> None:
        self.compositor = self.bind(WlCompositor, 4)
        self.shm = self.bind(WlShm)
        self.wm_base = self.bind(XdgWmBase)
        self.wm_base.dispatcher["ping"] = lambda base, serial: base.pong(serial)
        self.surface = self.compositor.create_surface()
        self.xdg_surface = self.wm_base.get_xdg_surface(self.surface)
        self.xdg_toplevel = self.xdg_surface.get_toplevel()
        self.xdg_toplevel.set_title(title)
        self.colour = colour
        self._pending_size = (0, 0)
        self.xdg_toplevel.dispatcher["configure"] = self._toplevel_configure
        self.xdg_toplevel.dispatcher["close"] = self._close
        self.xdg_surface.dispatcher["configure"] = self._surface_configure
        self.surface.commit()

    def _toplevel_configure(self, _toplevel: Any, width: int, height: int, _states: bytes) -> None:
        self._pending_size = (width or 320, height or 240)

    def _surface_configure(self, xdg_surface: Any, serial: int) -> None:
        xdg_surface.ack_configure(serial)
        if self._pending_size != self.size:
            self.size = self._pending_size
            self.record(event="xdg_configure", width=self.size[0], height=self.size[1])
            self._draw()

    def _close(self, _toplevel: Any) -> None:
        self.record(event="close_requested")
        self.closed = True

    def _draw(self) -> None:
        width, height = self.size
        stride = width * 4
        size = stride * height
        fd = os.memfd_create("weft-test-buffer")
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size) as memory:
            memory.write(self.colour.to_bytes(4, "little") * (width * height))
        pool = self.shm.create_pool(fd, size)
        buffer = pool.create_buffer(0, width, height, stride, XRGB8888)
        pool.destroy()
        os.close(fd)
        self.surface.attach(buffer, 0, 0)
        self.surface.damage_buffer(0, 0, width, height)
        self.surface.commit()

    def frame_callbacks(self, count: int, done: Callable[[], None]) -> None:
        """Commit (no new content) with a frame callback, again on each `done`, `count` times."""
        def on_done(_callback: Any, _time: int) -> None:
            self.frames_done += 1
            if self.frames_done < count:
                request()
            else:
                done()

        def request() -> None:
            self.frame_callback = self.surface.frame()
            self.frame_callback.dispatcher["done"] = on_done
            self.surface.commit()

        self.frames_done = 0
        request()

    # -- zweft ------------------------------------------------------------------------------
    def zweft_window(self, role: str, app_id: str = "org.example.test") -> Any:
        manager = self.bind(zweft().ZweftShellManagerV1, 2)
        window = manager.create_window(app_id, "title", role, None, 0, 0, 100, 100)
        window.dispatcher["configure"] = lambda _w, x, y, w, h, state: self.record(
            event="zweft_configure", x=x, y=y, width=w, height=h, state=state)
        window.dispatcher["focus_changed"] = lambda _w, focused: self.record(event="focus_changed", focused=focused)
        window.dispatcher["window_closed"] = lambda _w: self.record(event="window_closed")
        self.zweft_manager = manager
        return window

    # -- seat and clipboard -----------------------------------------------------------------
    def seat_and_clipboard(self) -> None:
        self.seat = self.bind(WlSeat, 5)
        self.seat.dispatcher["capabilities"] = self._capabilities
        self.data_manager = self.bind(WlDataDeviceManager, 3)
        self.data_device = self.data_manager.get_data_device(self.seat)
        self.data_device.dispatcher["data_offer"] = self._data_offer
        self.data_device.dispatcher["selection"] = self._selection
        self.keyboard: Any = None

    def _capabilities(self, seat: Any, capabilities: int) -> None:
        if capabilities & WlSeat.capability.keyboard and self.keyboard is None:
            self.keyboard = seat.get_keyboard()
            self.keyboard.dispatcher["enter"] = self._keyboard_enter
            self.keyboard.dispatcher["keymap"] = lambda _k, _f, fd, _s: os.close(fd)

    def _keyboard_enter(self, _keyboard: Any, serial: int, _surface: Any, _keys: bytes) -> None:
        self.keyboard_serial = serial
        self.record(event="keyboard_enter")

    def _data_offer(self, _device: Any, offer: Any) -> None:
        self.offers[offer] = []
        offer.dispatcher["offer"] = lambda o, mime: self.offers.setdefault(o, []).append(mime)

    def _selection(self, _device: Any, offer: Any) -> None:
        self.selection = offer

    def set_selection(self, text: str) -> None:
        source = self.data_manager.create_data_source()
        source.offer("text/plain;charset=utf-8")

        def send(_source: Any, _mime: str, fd: int) -> None:
            os.write(fd, text.encode())
            os.close(fd)

        source.dispatcher["send"] = send
        self.data_source = source
        self.data_device.set_selection(source, self.keyboard_serial or 0)
        self.display.flush()

    def read_selection(self) -> str:
        read_end, write_end = os.pipe()
        self.selection.receive("text/plain;charset=utf-8", write_end)
        self.display.flush()
        os.close(write_end)
        chunks = b""
        deadline = time.monotonic() + 5
        os.set_blocking(read_end, False)
        while time.monotonic() < deadline:
            self.dispatch(0.05)
            try:
                chunk = os.read(read_end, 4096)
            except BlockingIOError:
                continue
            if not chunk:
                break
            chunks += chunk
        os.close(read_end)
        return chunks.decode()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--colour", required=True)
    parser.add_argument("--zweft")
    parser.add_argument("--set-selection")
    parser.add_argument("--print-selection", action="store_true")
    parser.add_argument("--read-token", action="store_true")
    parser.add_argument("--ignore-close", action="store_true")
    parser.add_argument("--frames", type=int, default=0)
    parser.add_argument("--standby", action="store_true")
    parser.add_argument("--toplevel-before-session", action="store_true")
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args()

    def log(event: dict[str, Any]) -> None:
        with args.log.open("a") as f:
            f.write(json.dumps({"pid": os.getpid(), **event}) + "\n")

    env_token = any("token" in k.lower() for k in os.environ)
    if args.standby:
        client = Client(os.environ["WAYLAND_DISPLAY"], log)
        if args.toplevel_before_session:
            client.toplevel(0xFF00FF)
            client.display.roundtrip()
        log({"event": "standby_ready"})
        *args.rest, token = sys.stdin.readline().split()
        log({"event": "started", "argv": args.rest, "env_token": env_token, "standby": True})
        log({"event": "token", "token": token})
    else:
        log({"event": "started", "argv": args.rest, "env_token": env_token})
        if args.read_token:
            log({"event": "token", "token": sys.stdin.readline().strip()})
        client = Client(os.environ["WAYLAND_DISPLAY"], log)
    client.seat_and_clipboard()
    colour = SESSION_COLOURS[int(args.rest[1]) % len(SESSION_COLOURS)] if args.colour == "session" else \
        int(args.colour, 16)
    client.toplevel(colour)
    if args.zweft:
        client.zweft_window(args.zweft)
    selection_set = False
    selection_read = False
    frames_started = False
    while True:
        client.dispatch(0.1)
        if args.frames and client.size != (0, 0) and not frames_started:
            frames_started = True
            log({"event": "frames_started"})
            client.frame_callbacks(args.frames, lambda: log({"event": "frames_done", "count": args.frames}))
        if client.closed and not args.ignore_close:
            return 0
        if args.set_selection and client.keyboard_serial is not None and not selection_set:
            client.set_selection(args.set_selection)
            selection_set = True
            log({"event": "selection_set"})
        if args.print_selection and client.selection is not None and not selection_read:
            selection_read = True
            log({"event": "selection", "text": client.read_selection()})


if __name__ == "__main__":
    sys.exit(main())
