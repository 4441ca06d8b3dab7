"""The one place that touches GTK and WebKitGTK (PyGObject has no type stubs: keep this boundary small).

A `WebPage` is a top-level GTK window holding one WebKit view that:
- keeps WebKit's bubblewrap sandbox (the 4.1 API leaves it off unless asked), with an
  ephemeral context (no cache, cookies or storage on disk) and no developer tools, plugins,
  WebGL, WebRTC, media capture, or script clipboard access;
- loads pages only from one registered scheme, whose files a Python callback serves with a
  Content-Security-Policy header; every navigation to any other URL (http:, file:, data: ...)
  and every new window is refused;
- talks to its page only through the script message handler `weft` (page → Python: a string)
  and `deliver(text)`, which calls the page's `window.__weftDeliver(text)` with the JSON text
  as an argument (a GVariant), never pasted into JavaScript source.
"""
from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import gi  # type: ignore[import-untyped]  # PyGObject ships no type stubs

# Process-wide settings that must precede GTK's start, which importing Gtk is (PyGObject calls
# gtk_init_check): Wayland only, no GPU compositing, and the sandbox is not optional.
os.environ.setdefault("GDK_BACKEND", "wayland")
os.environ.setdefault("WEBKIT_DISABLE_COMPOSITING_MODE", "1")  # pixman compositor, no GPU
os.environ.pop("WEBKIT_DISABLE_SANDBOX_THIS_IS_DANGEROUS", None)

gi.require_version("Gtk", "3.0")
gi.require_version("WebKit2", "4.1")
gi.require_version("Soup", "3.0")
from gi.repository import Gio, GLib, Gtk, Soup, WebKit2  # type: ignore[import-untyped]  # noqa: E402

log = logging.getLogger("weft.webshell")

MESSAGE_HANDLER = "weft"


@dataclass(frozen=True)
class Served:
    """One response of the registered scheme."""

    status: int
    body: bytes
    content_type: str
    csp: str


def read_line_while_serving(fd: int, limit: int) -> bytes:
    """One line from `fd` (without its newline; b"" at end of file), read with GLib's main loop
    running meanwhile: the display connection GTK opened is served while the line is awaited.
    More than `limit` bytes without a newline are returned as they are, for the caller to refuse."""
    loop = GLib.MainLoop()
    data = bytearray()

    def readable(_fd: int, _condition: Any) -> bool:
        chunk = os.read(fd, limit + 1 - len(data))
        data.extend(chunk)
        if chunk and b"\n" not in data and len(data) <= limit:
            return True
        loop.quit()
        return False

    GLib.unix_fd_add_full(GLib.PRIORITY_DEFAULT, fd, GLib.IOCondition.IN | GLib.IOCondition.HUP, readable)
    loop.run()
    return bytes(data).split(b"\n", 1)[0]


def _harden(settings: Any) -> None:
    settings.set_enable_developer_extras(False)
    settings.set_enable_javascript(True)
    settings.set_javascript_can_access_clipboard(False)  # paste stays a user action (keyboard, menu)
    settings.set_javascript_can_open_windows_automatically(False)
    settings.set_allow_file_access_from_file_urls(False)
    settings.set_allow_universal_access_from_file_urls(False)
    settings.set_allow_top_navigation_to_data_urls(False)
    settings.set_enable_webgl(False)
    settings.set_enable_webrtc(False)
    settings.set_enable_media_stream(False)
    settings.set_enable_page_cache(False)
    settings.set_enable_back_forward_navigation_gestures(False)
    settings.set_enable_write_console_messages_to_stdout(True)  # page errors land in the journal



class Connection(Protocol):
    """What a page keeps open while it is shown (its WebSocket to appd)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class WebPage:
    """One window, one web view, one scheme. Call `run()` to enter GTK's main loop."""

    def __init__(self, *, scheme: str, origin: str, serve: Callable[[str], Served], title: str,
                 on_message: Callable[[str], None], user_script: str | None = None,
                 size: tuple[int, int] = (1280, 800)) -> None:
        self.origin = origin  # e.g. "weft-system://shell": the only URLs the view may show
        self.on_message = on_message
        self.refused: list[str] = []  # navigations refused so far (tests read them through the log)
        self._serve = serve
        context = WebKit2.WebContext.new_ephemeral()
        context.set_sandbox_enabled(True)
        context.set_cache_model(WebKit2.CacheModel.DOCUMENT_VIEWER)
        context.register_uri_scheme(scheme, self._on_scheme_request)
        security = context.get_security_manager()
        security.register_uri_scheme_as_secure(scheme)

        content = WebKit2.UserContentManager()
        if user_script is not None:
            content.add_script(WebKit2.UserScript.new(
                user_script, WebKit2.UserContentInjectedFrames.TOP_FRAME,
                WebKit2.UserScriptInjectionTime.START, None, None))
        content.connect(f"script-message-received::{MESSAGE_HANDLER}", self._on_script_message)
        content.register_script_message_handler(MESSAGE_HANDLER)
        self.view = WebKit2.WebView(web_context=context, user_content_manager=content)
        _harden(self.view.get_settings())
        self.view.connect("decide-policy", self._on_decide_policy)
        self.view.connect("web-process-terminated", self._on_web_process_terminated)
        self.view.connect("notify::title", lambda view, _spec: log.debug("page title: %s", view.get_title()))
        self.window = Gtk.Window(title=title)
        self.window.set_decorated(False)  # no GTK title bar: the compositor owns window management
        self.window.set_default_size(*size)
        self.window.add(self.view)
        self.window.connect("destroy", lambda _window: Gtk.main_quit())

    def load(self, url: str) -> None:
        self.view.load_uri(url)

    def show(self, url: str, connection: Connection) -> None:
        """Load `url` and run until the window goes (see `run`), with `connection` open meanwhile."""
        self.load(url)
        connection.start()
        try:
            self.run()
        finally:
            connection.stop()

    def run(self) -> None:
        """Show the window and run until it is closed, `quit()`, or SIGTERM/SIGINT (a clean exit 0)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, self._on_signal, signum)
        self.window.show_all()
        Gtk.main()

    @staticmethod
    def _on_signal(signum: int) -> bool:
        log.info("closing: %s", signal.Signals(signum).name)
        Gtk.main_quit()
        return False

    @staticmethod
    def quit() -> None:
        Gtk.main_quit()

    @staticmethod
    def in_main_thread(callback: Callable[[], None]) -> None:
        """Run `callback` on GTK's thread (from any thread)."""

        def once() -> bool:
            callback()
            return False

        GLib.idle_add(once)

    @staticmethod
    def every(seconds: int, callback: Callable[[], None]) -> None:
        def tick() -> bool:
            callback()
            return True

        GLib.timeout_add_seconds(seconds, tick)

    def deliver(self, text: str) -> None:
        """Hand `text` (JSON) to the page's `window.__weftDeliver`, as an argument, never as source."""
        arguments = GLib.Variant("a{sv}", {"text": GLib.Variant("s", text)})
        self.view.call_async_javascript_function(
            "if (typeof window.__weftDeliver === 'function') window.__weftDeliver(text);", -1,
            arguments, None, None, None, self._on_delivered, None)

    def _on_delivered(self, view: Any, result: Any, _data: Any) -> None:
        try:
            view.call_async_javascript_function_finish(result)
        except GLib.Error as exc:
            log.warning("the page did not take a message: %s", exc.message)

    def _on_script_message(self, _manager: Any, result: Any) -> None:
        value = result.get_js_value() if hasattr(result, "get_js_value") else result
        if not value.is_string():
            log.warning("ignoring a page message that is not a string")
            return
        self.on_message(value.to_string())

    def _on_scheme_request(self, request: Any) -> None:
        uri = request.get_uri()
        try:
            served = self._serve(uri)
        except Exception as exc:  # noqa: BLE001 - a page request must never end the shell
            log.error("serving %s failed: %s", uri, exc)
            served = Served(500, b"internal error\n", "text/plain", "default-src 'none'")
        stream = Gio.MemoryInputStream.new_from_bytes(GLib.Bytes.new(served.body))
        response = WebKit2.URISchemeResponse.new(stream, len(served.body))
        response.set_status(served.status, None)
        response.set_content_type(served.content_type)
        headers = Soup.MessageHeaders.new(Soup.MessageHeadersType.RESPONSE)
        headers.append("Content-Type", served.content_type)  # set_http_headers replaces what set_content_type set
        headers.append("Content-Security-Policy", served.csp)
        headers.append("X-Content-Type-Options", "nosniff")
        headers.append("Cache-Control", "no-store")
        response.set_http_headers(headers)
        request.finish_with_response(response)
        log.debug("served %s: %d %s", uri, served.status, served.content_type)

    def _allowed(self, uri: str) -> bool:
        return uri == self.origin or uri.startswith(self.origin + "/")

    def _on_decide_policy(self, _view: Any, decision: Any, kind: Any) -> bool:
        if kind == WebKit2.PolicyDecisionType.RESPONSE:
            return False  # the default: show what the scheme served
        uri = decision.get_navigation_action().get_request().get_uri()
        if kind == WebKit2.PolicyDecisionType.NAVIGATION_ACTION and self._allowed(uri):
            decision.use()
            return True
        decision.ignore()
        self.refused.append(uri)
        log.warning("refused navigation to %s (only %s/ may be shown)", uri, self.origin)
        return True

    def _on_web_process_terminated(self, _view: Any, reason: Any) -> None:
        log.error("the web process ended (%s); reloading the page", reason.value_nick)
        self.view.reload()
