"""The `weft:app@0.1.0` host imports, each checking the session's grants.

Decision (docs/platform.md): every import is linked for every app, and an import whose
capability is not granted returns `err("capability '…' not granted")`. Refusing at link
time would make one component per capability set necessary, and an app could not degrade
gracefully. `notify` and `ipc` need no capability.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wasmtime import Engine
from wasmtime.component import Linker, Record, Variant

from weft.daemons.runtime import fetch as http
from weft.daemons.runtime.channels import PortalClient, PortalError, Relay
from weft.daemons.runtime.grants import Grants
from weft.errors import WeftError
from weft.proc import inherited, run

WitResult = Any  # a Python value lowered into a WIT `result` (see OK)

PACKAGE = "weft:app"
VERSION = "0.1.0"
TOOL_TIMEOUT_S = 5.0


# wasmtime-py lowers a Python value into a WIT `result` by its type: None is `ok` of
# `result<_, E>`, a str is `err(string)`, bytes/list/Record are `ok` payloads. Only the
# ambiguous `result<string, string>` needs an explicit Variant.
OK = None


def _err(message: str) -> str:
    return message[:4096]


def _not_granted(capability: str) -> str:
    return _err(f"capability '{capability}' not granted")


class _ResponseRecord(Record):
    """The WIT `response`: wasmtime-py lowers a Record instance, reading each field by its WIT name."""

    def __init__(self, response: http.FetchResponse) -> None:
        self.status = response.status
        setattr(self, "content-type", response.content_type)  # not a Python identifier
        self.body = response.body


class HostImports:
    """Python implementations of the imports for one session (called on the guest's thread)."""

    def __init__(self, grants: Grants, relay: Relay | None, portal: PortalClient, on_ready: Callable[[], None]):
        self.grants = grants
        self.relay = relay
        self.portal = portal
        self.on_ready = on_ready

    # -- notify, ipc ---------------------------------------------------------------------
    def ready(self, _store: object) -> None:
        self.on_ready()

    def ipc_send(self, _store: object, payload: str) -> WitResult:
        if self.relay is None:
            return _err("IPC not connected")
        try:
            self.relay.send_ipc(payload)
        except (OSError, ValueError) as exc:
            return _err(f"IPC send failed: {exc}")
        return OK

    def ipc_recv(self, _store: object) -> str | None:
        return None if self.relay is None else self.relay.inbox.get()

    # -- fetch --------------------------------------------------------------------------
    def fetch(self, _store: object, url: str, method: str, headers: list[tuple[str, str]],
              body: bytes | None) -> WitResult:
        try:
            response = http.fetch(self.grants, url, method, list(headers), body)
        except http.FetchDenied as exc:
            return _err(str(exc))
        return _ResponseRecord(response)

    # -- notifications, clipboard ---------------------------------------------------------
    def _tool(self, argv: list[str], stdin: bytes | None = None) -> bytes:
        # notify-send and wl-copy/wl-paste reach the session through these (the child env is clean).
        session = inherited("WAYLAND_DISPLAY", "XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "DISPLAY")
        return run(argv, timeout=TOOL_TIMEOUT_S, input=stdin, env=session).stdout

    def notify(self, _store: object, title: str, body: str, icon: str | None) -> WitResult:
        if not self.grants.notifications:
            return _not_granted("sys:notifications")
        argv = ["notify-send", *(["--icon", icon] if icon else []), "--", title, body]
        try:
            self._tool(argv)
        except WeftError as exc:
            return _err(str(exc))
        return OK

    def clipboard_read(self, _store: object) -> WitResult:
        if not self.grants.clipboard_read:
            return Variant("err", _not_granted("sys:clipboard:read"))
        try:
            return Variant("ok", self._tool(["wl-paste", "--no-newline"]).decode())
        except (WeftError, UnicodeDecodeError) as exc:
            return Variant("err", _err(str(exc)))

    def clipboard_write(self, _store: object, text: str) -> WitResult:
        if not self.grants.clipboard_write:
            return _not_granted("sys:clipboard:write")
        try:
            self._tool(["wl-copy"], stdin=text.encode())
        except WeftError as exc:
            return _err(str(exc))
        return OK

    # -- files (through the portal) --------------------------------------------------------
    def files_read(self, _store: object, path: str) -> WitResult:
        try:
            return self.portal.read(path)
        except PortalError as exc:
            return _err(str(exc))

    def files_write(self, _store: object, path: str, data: bytes) -> WitResult:
        try:
            self.portal.write(path, bytes(data))
        except PortalError as exc:
            return _err(str(exc))
        return OK

    def files_list(self, _store: object, path: str) -> WitResult:
        try:
            return self.portal.list_dir(path)
        except PortalError as exc:
            return _err(str(exc))


def build_linker(engine: Engine, imports: HostImports) -> Linker:
    linker = Linker(engine)
    linker.add_wasip2()
    interfaces: dict[str, dict[str, Callable[..., Any]]] = {
        "notify": {"ready": imports.ready},
        "ipc": {"send": imports.ipc_send, "recv": imports.ipc_recv},
        "fetch": {"fetch": imports.fetch},
        "notifications": {"notify": imports.notify},
        "clipboard": {"read": imports.clipboard_read, "write": imports.clipboard_write},
        "files": {"read": imports.files_read, "write": imports.files_write, "list-dir": imports.files_list},
    }
    with linker.root() as root:
        for interface, functions in interfaces.items():
            with root.add_instance(f"{PACKAGE}/{interface}@{VERSION}") as instance:
                for name, function in functions.items():
                    instance.add_func(name, function)
    return linker
