"""The runtime ⇄ appd relay: one JSON object per line over a socket pair that appd creates.

The reference relayed raw text lines, so a payload containing a newline arrived as several
messages (§4.9). Here every line is a JSON object, so any payload arrives intact. The relay
is also the readiness channel: only the runtime's `notify.ready` host import writes
`{"t":"ready"}`; guest stdout never reaches this socket, so a guest cannot fake readiness.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from weft.daemons.protocol import MAX_PAYLOAD_BYTES, Payload, SessionId
from weft.errors import WeftError
from weft.manifest import AppId
from weft.settings import MemoryMib
from weft.store import Publisher

RootHash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

# A payload's JSON form is at most 6 bytes per character (\uXXXX) plus the envelope.
MAX_LINE_BYTES = 6 * MAX_PAYLOAD_BYTES + 4096


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Launch(_Line):
    """appd → standby runtime: become this session.

    appd chose the package (daemons/appd/app_source.py): the runtime reads it from
    `package_root` and never looks in a store itself; it still checks the manifest's id."""

    t: Literal["launch"] = "launch"
    app_id: AppId
    session_id: SessionId
    memory_mib: MemoryMib
    package_root: Path  # the verified mount /run/weft/apps/<id>, or (developer setting) a package directory
    publisher: Publisher  # who signed it: the app's data directory is bound to it
    image_root_hash: RootHash | None = None  # set for a verified image: part of the compile-cache key

    @field_validator("package_root")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError("package_root must be an absolute path")
        return value


class Ipc(_Line):
    """One UI⇄app message, in either direction."""

    t: Literal["ipc"] = "ipc"
    payload: Payload


class Ready(_Line):
    """runtime → appd: the guest called `notify.ready`."""

    t: Literal["ready"] = "ready"


ToRuntime = TypeAdapter(Annotated[Launch | Ipc, Field(discriminator="t")])
FromRuntime = TypeAdapter(Annotated[Ready | Ipc, Field(discriminator="t")])


class RelayError(WeftError):
    pass


def encode_line(message: _Line) -> bytes:
    return message.model_dump_json().encode() + b"\n"


def decode_line(line: bytes, adapter: TypeAdapter[Any]) -> Launch | Ipc | Ready:
    if len(line) > MAX_LINE_BYTES:
        raise RelayError(f"relay line of {len(line)} bytes exceeds {MAX_LINE_BYTES}")
    try:
        message: Launch | Ipc | Ready = adapter.validate_json(line)
    except ValidationError as exc:
        raise RelayError(f"invalid relay line: {exc.errors()[0]['msg']}") from None
    return message
