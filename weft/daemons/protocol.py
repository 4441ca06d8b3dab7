"""The appd control protocol: one set of message models and both framings (reference §4.2-4.3).

Every transport and every client uses this module: the Unix socket carries a 4-byte
little-endian length and a msgpack body; the WebSocket carries the same messages as JSON
text frames. Requests may be msgpack maps (`{"type": ...}`) or arrays
(`[type, field1, ...]` in the field order below); replies are always maps.

Additions to the reference catalogue (documented in docs/platform.md): `IPC_RECV` pulls the
next app→UI message of a session, `QUERY_SESSION_TOKEN` hands out the token that binds a
WebSocket to one session, `FOCUS_APP` asks the compositor to raise a session's window, and
`TERMINATE_APP` answers with the real state (`stopping`).
"""
from __future__ import annotations

import asyncio
import enum
import json
import os
import socket
import struct
from typing import Annotated, Any, Literal, Self, TypeVar

import msgpack
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from weft.errors import WeftError
from weft.manifest import AppId

MAX_FRAME_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_RECV_TIMEOUT_MS = 60_000  # IPC_RECV waits at most this long
LENGTH = struct.Struct("<I")

T = TypeVar("T")
SessionId = Annotated[int, Field(ge=1, lt=1 << 63)]
U32 = Annotated[int, Field(ge=0, lt=1 << 32)]


def _payload_in_bytes(text: str) -> str:
    """The cap is in UTF-8 bytes, so a payload always fits a frame (pydantic refuses lone surrogates)."""
    size = len(text.encode())
    if size > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {size} bytes (UTF-8) exceeds {MAX_PAYLOAD_BYTES}")
    return text


Payload = Annotated[str, Field(max_length=MAX_PAYLOAD_BYTES), AfterValidator(_payload_in_bytes)]


class ErrorCode(enum.IntEnum):
    SESSION_NOT_FOUND = 1  # the reference's only code
    BAD_REQUEST = 2
    NOT_PERMITTED = 3
    LAUNCH_FAILED = 4
    NOT_RUNNING = 5
    TIMEOUT = 6
    BUSY = 7


class SessionState(enum.StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    NOT_FOUND = "not_found"


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# ---- requests -------------------------------------------------------------------------

class LaunchApp(Message):
    type: Literal["LAUNCH_APP"] = "LAUNCH_APP"
    app_id: AppId
    surface_id: int = 0  # kept for compatibility; optional here (the reference dropped requests without it)


class TerminateApp(Message):
    type: Literal["TERMINATE_APP"] = "TERMINATE_APP"
    session_id: SessionId


class QueryRunning(Message):
    type: Literal["QUERY_RUNNING"] = "QUERY_RUNNING"


class QueryAppState(Message):
    type: Literal["QUERY_APP_STATE"] = "QUERY_APP_STATE"
    session_id: SessionId


class QueryInstalledApps(Message):
    type: Literal["QUERY_INSTALLED_APPS"] = "QUERY_INSTALLED_APPS"


class IpcForward(Message):
    type: Literal["IPC_FORWARD"] = "IPC_FORWARD"
    session_id: SessionId
    payload: Payload


class IpcRecv(Message):
    type: Literal["IPC_RECV"] = "IPC_RECV"
    session_id: SessionId
    timeout_ms: Annotated[int, Field(ge=0, le=MAX_RECV_TIMEOUT_MS)] = 5_000


class QuerySessionToken(Message):
    type: Literal["QUERY_SESSION_TOKEN"] = "QUERY_SESSION_TOKEN"
    session_id: SessionId


class FocusApp(Message):
    """Raise and focus the session's window (the taskbar's click); control clients only."""

    type: Literal["FOCUS_APP"] = "FOCUS_APP"
    session_id: SessionId


class PanelGesture(Message):
    type: Literal["PANEL_GESTURE"] = "PANEL_GESTURE"
    gesture_type: U32
    fingers: U32
    dx: float
    dy: float


Request = Annotated[
    LaunchApp | TerminateApp | QueryRunning | QueryAppState | QueryInstalledApps | IpcForward | IpcRecv
    | QuerySessionToken | FocusApp | PanelGesture,
    Field(discriminator="type"),
]
REQUEST_TYPES: dict[str, type[Message]] = {
    cls.model_fields["type"].default: cls
    for cls in (LaunchApp, TerminateApp, QueryRunning, QueryAppState, QueryInstalledApps, IpcForward,
                IpcRecv, QuerySessionToken, FocusApp, PanelGesture)
}
_REQUEST = TypeAdapter(Request)

# ---- replies and notifications ------------------------------------------------------------


class SessionInfo(Message):
    session_id: SessionId
    app_id: str
    # Only in RUNNING_APPS.ended_with_error: why that session ended (see AppState).
    reason: str | None = None
    error: str | None = None


class AppInfo(Message):
    app_id: str
    name: str
    version: str


class LaunchAck(Message):
    type: Literal["LAUNCH_ACK"] = "LAUNCH_ACK"
    session_id: SessionId
    app_id: str


class AppReady(Message):
    type: Literal["APP_READY"] = "APP_READY"
    session_id: SessionId
    app_id: str


class RunningApps(Message):
    type: Literal["RUNNING_APPS"] = "RUNNING_APPS"
    sessions: list[SessionInfo]
    # The most recent sessions that ended with an error (newest last), so `weft-appctl ps` can
    # say why an app is gone; absent from the reference (an addition, ignored by old clients).
    ended_with_error: list[SessionInfo] | None = None


class AppState(Message):
    type: Literal["APP_STATE"] = "APP_STATE"
    session_id: SessionId
    state: SessionState
    # Set once a session has ended with an error: a stable word (EndReason) and a message for people.
    reason: str | None = None
    error: str | None = None


class InstalledApps(Message):
    type: Literal["INSTALLED_APPS"] = "INSTALLED_APPS"
    apps: list[AppInfo]


class IpcMessage(Message):
    type: Literal["IPC_MESSAGE"] = "IPC_MESSAGE"
    session_id: SessionId
    payload: str


class SessionToken(Message):
    type: Literal["SESSION_TOKEN"] = "SESSION_TOKEN"
    session_id: SessionId
    token: str


class NavigationGesture(Message):
    type: Literal["NAVIGATION_GESTURE"] = "NAVIGATION_GESTURE"
    gesture_type: int
    fingers: int
    dx: float
    dy: float


class Error(Message):
    type: Literal["ERROR"] = "ERROR"
    code: int
    message: str
    reason: str | None = None  # LAUNCH_FAILED: a LaunchReason value (plain str on the wire: forward compatible)


class LaunchReason(enum.StrEnum):
    """Why LAUNCH_APP failed (ERROR code 4, `reason`): every MountReason, passed through from
    weft-mountd, and appd's own. Stable words: `weft-appctl launch` maps each to an exit code."""

    NOT_INSTALLED = "not_installed"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    CORRUPTED = "corrupted"
    ROLLBACK = "rollback"
    BAD_IMAGE = "bad_image"
    ID_MISMATCH = "id_mismatch"
    MOUNT_FAILED = "mount_failed"
    NOT_PERMITTED = "not_permitted"
    BAD_REQUEST = "bad_request"
    MOUNTD_UNAVAILABLE = "mountd_unavailable"  # appd cannot reach weft-mountd
    BAD_PACKAGE = "bad_package"  # WEFT_APP_SOURCE=directory: the package directory is unusable


class EndReason(enum.StrEnum):
    """Why a session ended with an error (APP_STATE `reason`)."""

    CORRUPTED = "corrupted"  # dm-verity saw a block of the app's image that does not match
    FAILED = "failed"  # the runtime exited with an error status or was killed, not on request
    READY_TIMEOUT = "ready_timeout"
    RELAY_FAILED = "relay_failed"
    CGROUP_FAILED = "cgroup_failed"


Reply = Annotated[
    LaunchAck | AppReady | RunningApps | AppState | InstalledApps | IpcMessage | SessionToken | NavigationGesture
    | Error,
    Field(discriminator="type"),
]
_REPLY = TypeAdapter(Reply)


class ProtocolError(WeftError):
    """A peer sent something that is not a valid message; `code` goes back in an ERROR reply."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.BAD_REQUEST):
        self.code = code
        super().__init__(message)


def _describe(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"][1:] or first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def _validate(adapter: TypeAdapter[T], data: Any, what: str) -> T:
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise ProtocolError(f"invalid {what}: {_describe(exc)}") from None


def parse_request(data: Any) -> Message:
    """A request from a decoded msgpack/JSON value: a map with `type`, or an array."""
    if isinstance(data, (list, tuple)):
        if not data or not isinstance(data[0], str) or data[0] not in REQUEST_TYPES:
            raise ProtocolError("unknown or missing request type")
        fields = [f for f in REQUEST_TYPES[data[0]].model_fields if f != "type"]
        if len(data) - 1 > len(fields):
            raise ProtocolError(f"too many fields for {data[0]}")
        data = {"type": data[0], **dict(zip(fields, data[1:], strict=False))}
    if not isinstance(data, dict):
        raise ProtocolError("a request must be a map or an array")
    kind = data.get("type")
    if not isinstance(kind, str):  # a list or map here is unhashable: check before the lookup
        raise ProtocolError("unknown request type: `type` must be a string")
    if kind not in REQUEST_TYPES:
        raise ProtocolError(f"unknown request type {kind[:40]!r}")
    return _validate(_REQUEST, data, kind)


def parse_reply(data: Any) -> Message:
    return _validate(_REPLY, data, "reply")


def to_wire(message: Message) -> dict[str, Any]:
    # Optional additions (`reason`, `error`, ...) are left out when unset: the reference's bytes stay as they were.
    return message.model_dump(mode="json", exclude_none=True)


# ---- JSON (WebSocket) -----------------------------------------------------------------------

def decode_json_request(text: str | bytes) -> Message:
    if len(text) > MAX_FRAME_BYTES:
        raise ProtocolError(f"message larger than {MAX_FRAME_BYTES} bytes")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("not JSON: nested too deeply") from None
    return parse_request(data)


def encode_json(message: Message) -> str:
    return message.model_dump_json(exclude_none=True)


# ---- length-prefixed msgpack (Unix socket) ------------------------------------------------

class FrameTooLarge(ProtocolError):
    """The declared length exceeds the cap; the stream cannot be resynchronised."""


def encode_frame(message: Message | dict[str, Any] | list[Any]) -> bytes:
    body = msgpack.packb(to_wire(message) if isinstance(message, BaseModel) else message, use_bin_type=True)
    if len(body) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME_BYTES}")
    return LENGTH.pack(len(body)) + body


def decode_body(body: bytes) -> Any:
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except msgpack.StackError:  # its message is empty
        raise ProtocolError("malformed msgpack: nested too deeply") from None
    except (ValueError, msgpack.ExtraData, msgpack.FormatError) as exc:
        raise ProtocolError(f"malformed msgpack: {exc}") from None
    except TypeError:  # a map key that is an array or a map: no Python dict can hold it
        raise ProtocolError("malformed msgpack: a map key is an array or a map") from None


def _check_length(header: bytes, max_bytes: int, what: str = "frame") -> int:
    (length,) = LENGTH.unpack(header)
    if length > max_bytes:
        raise FrameTooLarge(f"{what} of {length} bytes exceeds {max_bytes}")
    return int(length)


async def read_frame(reader: asyncio.StreamReader, max_bytes: int = MAX_FRAME_BYTES,
                     what: str = "frame") -> bytes | None:
    """The next frame body (at most `max_bytes`), or None at a clean end of stream."""
    try:
        header = await reader.readexactly(LENGTH.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("connection closed inside a frame header") from None
        return None
    length = _check_length(header, max_bytes, what)
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise ProtocolError("connection closed inside a frame") from None


def recv_frame(sock: socket.socket, closed: str) -> bytes:
    """The next frame body from a blocking socket; ProtocolError(`closed`) if the peer closes first."""
    return _recv_exactly(sock, _check_length(_recv_exactly(sock, LENGTH.size, closed), MAX_FRAME_BYTES), closed)


def _recv_exactly(sock: socket.socket, size: int, closed: str) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ProtocolError(closed)
        chunks += chunk
    return bytes(chunks)


class UnixClient:
    """A blocking connection to a daemon's Unix socket (`peer` names the daemon in errors)."""

    peer = "weft-appd"

    def __init__(self, path: str | os.PathLike[str], timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(os.fspath(path))
        except OSError as exc:
            self.sock.close()
            raise WeftError(f"cannot connect to {self.peer} at {os.fspath(path)}: {exc.strerror or exc}") from None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client(UnixClient):
    """weft-appd's Unix socket: one request, one reply (used by weft-appctl and tests)."""

    def __init__(self, path: str, timeout: float = 70.0) -> None:
        super().__init__(path, timeout)

    def request(self, message: Message) -> Message:
        self.sock.sendall(encode_frame(message))
        return parse_reply(decode_body(recv_frame(self.sock, "weft-appd closed the connection")))


# ==== weft-compositor IPC (appd ⇄ compositor) =================================================
# Reference §4.10 framing: 4-byte LE length + a named msgpack map, `type` in snake_case, frames
# of at most 4 MiB. appd connects; the compositor listens (docs/desktop.md, "appd ⇄ compositor").
# Shared by appd (weft/daemons/appd/compositor_link.py) and weft-compositor: one home for both.

COMPOSITOR_MAX_FRAME_BYTES = 4 << 20
TokenText = Annotated[str, Field(min_length=1, max_length=256)]


class AppSurfaceCreated(Message):
    """appd → compositor, after the session's READY: start the app shell for this session and
    accept its window. `token` is the session token; the compositor hands it to the app shell
    on stdin (never argv or environment). Re-sent for every running session on each new
    connection, so a restarted compositor gets its windows back."""

    type: Literal["app_surface_created"] = "app_surface_created"
    app_id: AppId
    session_id: SessionId
    pid: Annotated[int, Field(ge=1, lt=1 << 32)]  # the session's runtime process
    token: TokenText


class AppSurfaceDestroyed(Message):
    """appd → compositor: the session ended (any path); close its window and stop its app shell."""

    type: Literal["app_surface_destroyed"] = "app_surface_destroyed"
    session_id: SessionId


class AppFocusRequest(Message):
    """appd → compositor (FOCUS_APP): raise and focus the session's window."""

    type: Literal["app_focus_request"] = "app_focus_request"
    session_id: SessionId


class SurfaceReady(Message):
    """compositor → appd: the session's window was mapped."""

    type: Literal["surface_ready"] = "surface_ready"
    session_id: SessionId


class WindowClosed(Message):
    """compositor → appd: the user closed the session's window, or its app shell exited; appd
    terminates the session."""

    type: Literal["window_closed"] = "window_closed"
    session_id: SessionId


ToCompositor = AppSurfaceCreated | AppSurfaceDestroyed | AppFocusRequest
FromCompositor = SurfaceReady | WindowClosed
TO_COMPOSITOR_TYPES = frozenset({"app_surface_created", "app_surface_destroyed", "app_focus_request"})
FROM_COMPOSITOR_TYPES = frozenset({"surface_ready", "window_closed"})
_TO_COMPOSITOR: TypeAdapter[ToCompositor] = TypeAdapter(Annotated[ToCompositor, Field(discriminator="type")])
_FROM_COMPOSITOR: TypeAdapter[FromCompositor] = TypeAdapter(Annotated[FromCompositor, Field(discriminator="type")])


class UnknownMessageType(ProtocolError):
    """A well-formed map whose `type` this side does not know (a newer peer): skip it, keep the link."""


def _compositor_message(data: Any, adapter: TypeAdapter[T], known: frozenset[str], what: str) -> T:
    if not isinstance(data, dict):
        raise ProtocolError(f"a {what} must be a map")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(f"a {what} needs a string `type`")
    if kind not in known:
        raise UnknownMessageType(f"unknown {what} type {kind[:40]!r}")
    return _validate(adapter, data, kind)


def parse_to_compositor(data: Any) -> ToCompositor:
    """A decoded frame appd sent to the compositor."""
    return _compositor_message(data, _TO_COMPOSITOR, TO_COMPOSITOR_TYPES, "message to the compositor")


def parse_from_compositor(data: Any) -> FromCompositor:
    """A decoded frame the compositor sent to appd."""
    return _compositor_message(data, _FROM_COMPOSITOR, FROM_COMPOSITOR_TYPES, "message from the compositor")


async def read_compositor_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame body on the compositor IPC socket (at most 4 MiB), or None at a clean end."""
    return await read_frame(reader, COMPOSITOR_MAX_FRAME_BYTES, "compositor frame")


# ==== weft-mountd ============================================================================
# The privileged mount helper's protocol (docs/mountd.md): the same framing as appd's Unix
# socket (4-byte LE length + msgpack map), requests capped far smaller since they are tiny.
# Only appd's uid talks to it; references to a mount are counted per connection.

MOUNTD_MAX_REQUEST_BYTES = 4096


class MountReason(enum.StrEnum):
    """Why a mountd request failed: stable strings that appd passes on to its clients."""

    NOT_INSTALLED = "not_installed"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    CORRUPTED = "corrupted"
    ROLLBACK = "rollback"
    BAD_IMAGE = "bad_image"  # truncated, garbage, impossible offsets, appended bytes
    ID_MISMATCH = "id_mismatch"
    MOUNT_FAILED = "mount_failed"
    NOT_PERMITTED = "not_permitted"
    BAD_REQUEST = "bad_request"


class MountApp(Message):
    type: Literal["MOUNT_APP"] = "MOUNT_APP"
    app_id: AppId


class UnmountApp(Message):
    type: Literal["UNMOUNT_APP"] = "UNMOUNT_APP"
    app_id: AppId


class ListMounts(Message):
    type: Literal["LIST_MOUNTS"] = "LIST_MOUNTS"


class CheckApp(Message):
    type: Literal["CHECK_APP"] = "CHECK_APP"
    app_id: AppId


class AppMounted(Message):
    type: Literal["APP_MOUNTED"] = "APP_MOUNTED"
    app_id: str
    version: str
    root_hash: str
    mount_path: str
    # The fingerprint (weft.store.publisher_from_key_id) of the trusted key that verified the
    # image: appd binds the app's data to it. Optional on the wire; appd refuses a mount without it.
    publisher: str | None = None


class AppUnmounted(Message):
    type: Literal["APP_UNMOUNTED"] = "APP_UNMOUNTED"
    app_id: str
    remaining: int  # references left (all connections); 0 = unmounted


class MountEntry(Message):
    app_id: str
    version: str
    root_hash: str
    mount_path: str
    refs: int
    dm_name: str
    loop: str  # e.g. /dev/loop3


class Mounts(Message):
    type: Literal["MOUNTS"] = "MOUNTS"
    mounts: list[MountEntry]


class AppStatus(Message):
    type: Literal["APP_STATUS"] = "APP_STATUS"
    app_id: str
    corrupted: bool  # dm-verity has seen a block that does not match its hash


class MountError(Message):
    type: Literal["MOUNT_ERROR"] = "MOUNT_ERROR"
    app_id: str  # "" when the request was unreadable
    reason: MountReason
    message: str


MountdRequest = Annotated[MountApp | UnmountApp | ListMounts | CheckApp, Field(discriminator="type")]
MountdReply = Annotated[AppMounted | AppUnmounted | Mounts | AppStatus | MountError, Field(discriminator="type")]
MOUNTD_REQUEST_TYPES = frozenset({"MOUNT_APP", "UNMOUNT_APP", "LIST_MOUNTS", "CHECK_APP"})
_MOUNTD_REQUEST: TypeAdapter[MountApp | UnmountApp | ListMounts | CheckApp] = TypeAdapter(MountdRequest)
_MOUNTD_REPLY: TypeAdapter[AppMounted | AppUnmounted | Mounts | AppStatus | MountError] = TypeAdapter(MountdReply)


def parse_mountd_request(data: Any) -> MountApp | UnmountApp | ListMounts | CheckApp:
    """A mountd request from a decoded msgpack value (maps only: the requests are few and small)."""
    if not isinstance(data, dict):
        raise ProtocolError("a mountd request must be a map")
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in MOUNTD_REQUEST_TYPES:
        raise ProtocolError(f"unknown mountd request type {str(kind)[:40]!r}")
    return _validate(_MOUNTD_REQUEST, data, kind)


def parse_mountd_reply(data: Any) -> AppMounted | AppUnmounted | Mounts | AppStatus | MountError:
    return _validate(_MOUNTD_REPLY, data, "mountd reply")


async def read_mountd_request(reader: asyncio.StreamReader) -> bytes | None:
    """The next request body (at most MOUNTD_MAX_REQUEST_BYTES), or None at a clean end of stream."""
    return await read_frame(reader, MOUNTD_MAX_REQUEST_BYTES, "request")


# ==== weft-file-portal =======================================================================
# JSON lines (reference §6) between weft-file-portal (weft/daemons/file_portal.py) and its
# client in the runtime (weft/daemons/runtime/channels.py): one request object per line, one
# reply line for each. A successful write answers `null`. The line bounds follow from the
# file and listing bounds, so all four live here.
PORTAL_MAX_FILE_BYTES = 4 << 20
PORTAL_MAX_REQUEST_BYTES = PORTAL_MAX_FILE_BYTES * 4 // 3 + 4096  # a whole file in base64, and the rest
PORTAL_MAX_LIST_ENTRIES = 10_000
# The longest reply: PORTAL_MAX_LIST_ENTRIES names of NAME_MAX (255) bytes, each byte at most a
# 6-character JSON escape, is 15.3 MB; a file is 4/3 of PORTAL_MAX_FILE_BYTES.
PORTAL_MAX_REPLY_BYTES = 16 << 20

PortalPath = Annotated[str, Field(max_length=4096)]


class PortalRead(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    op: Literal["read"] = "read"
    path: PortalPath


class PortalWrite(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    op: Literal["write"] = "write"
    path: PortalPath
    data_b64: str


class PortalList(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    op: Literal["list"] = "list"
    path: PortalPath


class PortalReadReply(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    data_b64: str


class PortalListReply(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    entries: list[str]
    skipped_non_utf8: int = 0  # names that are not UTF-8 (a WIT string cannot carry them); sent only when > 0


class PortalErrorReply(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    error: str


PortalRequest = PortalRead | PortalWrite | PortalList
PortalReply = PortalReadReply | PortalListReply | PortalErrorReply | None
_PORTAL_REQUEST: TypeAdapter[PortalRequest] = TypeAdapter(Annotated[PortalRequest, Field(discriminator="op")])
_PORTAL_REPLY: TypeAdapter[PortalReply] = TypeAdapter(PortalReply)


def encode_portal_request(request: PortalRequest) -> bytes:
    return json.dumps(request.model_dump(mode="json")).encode() + b"\n"


def decode_portal_request(line: bytes) -> PortalRequest:
    try:
        return _PORTAL_REQUEST.validate_json(line)
    except ValidationError as exc:
        raise ProtocolError(f"bad request: {exc.errors()[0]['msg']}") from None


def encode_portal_reply(reply: PortalReply) -> bytes:
    body = None if reply is None else reply.model_dump(mode="json", exclude_defaults=True)
    return json.dumps(body).encode() + b"\n"


def decode_portal_reply(line: bytes) -> PortalReply:
    try:
        return _PORTAL_REPLY.validate_json(line)
    except ValidationError:
        raise ProtocolError("malformed file portal reply") from None
