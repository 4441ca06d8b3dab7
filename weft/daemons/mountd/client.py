"""A small blocking client of weft-mountd, for appd (and tests).

Keep one client open for as long as the mounts are needed: references are counted per
connection, and closing it releases every mount it took. A MOUNT_ERROR reply is raised as
MountdError with its stable `reason`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from weft import settings
from weft.daemons.mountd.errors import MountdError
from weft.daemons.protocol import (
    AppMounted,
    AppStatus,
    AppUnmounted,
    CheckApp,
    ListMounts,
    Message,
    MountApp,
    MountEntry,
    MountError,
    MountReason,
    Mounts,
    ProtocolError,
    UnixClient,
    UnmountApp,
    decode_body,
    encode_frame,
    parse_mountd_reply,
    recv_frame,
)

R = TypeVar("R", bound=Message)
CLOSED = "the connection was closed without an answer (weft-mountd serves only the appd user)"


class MountdClient(UnixClient):
    peer = "weft-mountd"

    def __init__(self, path: Path = settings.MOUNTD_SOCKET.default, timeout: float = 30.0) -> None:
        self.path = path
        super().__init__(path, timeout)

    def mount(self, app_id: str) -> AppMounted:
        """Mount (or reuse the mount of) the app's verified image; takes one reference."""
        return self._call(MountApp(app_id=app_id), AppMounted)

    def unmount(self, app_id: str) -> int:
        """Drop one reference; returns the references left (0: it was unmounted)."""
        return self._call(UnmountApp(app_id=app_id), AppUnmounted).remaining

    def list_mounts(self) -> list[MountEntry]:
        return self._call(ListMounts(), Mounts).mounts

    def is_corrupted(self, app_id: str) -> bool:
        """Has dm-verity seen a block of this app's mounted image that does not match?"""
        return self._call(CheckApp(app_id=app_id), AppStatus).corrupted

    def _call(self, request: MountApp | UnmountApp | ListMounts | CheckApp, expected: type[R]) -> R:
        try:
            self.sock.sendall(encode_frame(request))
            reply = parse_mountd_reply(decode_body(recv_frame(self.sock, CLOSED)))
        except (BrokenPipeError, ConnectionResetError):
            raise MountdError(MountReason.MOUNT_FAILED, f"weft-mountd at {self.path}: {CLOSED}") from None
        except (OSError, ProtocolError) as exc:
            raise MountdError(MountReason.MOUNT_FAILED, f"weft-mountd at {self.path}: {exc}") from None
        if isinstance(reply, MountError):
            raise MountdError(reply.reason, reply.message)
        if not isinstance(reply, expected):
            raise MountdError(MountReason.MOUNT_FAILED, f"weft-mountd answered {reply.type} to {request.type}")
        return reply
