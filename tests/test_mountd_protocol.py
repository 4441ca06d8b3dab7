"""The weft-mountd wire models: what parses, what is refused, and the stable reason strings."""
from __future__ import annotations

import asyncio

import msgpack
import pytest

from weft.daemons.protocol import (
    LENGTH,
    MOUNTD_MAX_REQUEST_BYTES,
    AppMounted,
    CheckApp,
    FrameTooLarge,
    ListMounts,
    MountApp,
    MountError,
    MountReason,
    ProtocolError,
    UnmountApp,
    decode_body,
    encode_frame,
    parse_mountd_reply,
    parse_mountd_request,
    read_mountd_request,
)


def test_requests_parse() -> None:
    assert parse_mountd_request({"type": "MOUNT_APP", "app_id": "org.weft.demo.counter"}) == \
        MountApp(app_id="org.weft.demo.counter")
    assert parse_mountd_request({"type": "UNMOUNT_APP", "app_id": "a.b.c"}) == UnmountApp(app_id="a.b.c")
    assert parse_mountd_request({"type": "CHECK_APP", "app_id": "a.b.c"}) == CheckApp(app_id="a.b.c")
    assert parse_mountd_request({"type": "LIST_MOUNTS"}) == ListMounts()


@pytest.mark.parametrize("data", [
    [1, 2], "MOUNT_APP", {"type": "LAUNCH_APP", "app_id": "a.b.c"}, {"type": ["MOUNT_APP"]},
    {"type": "MOUNT_APP"}, {"type": "MOUNT_APP", "app_id": "../../etc"}, {"type": "MOUNT_APP", "app_id": "/abs.b.c"},
    {"type": "MOUNT_APP", "app_id": 7}, {"type": "MOUNT_APP", "app_id": "Com.Example.App"},
])
def test_bad_requests_are_protocol_errors(data: object) -> None:
    with pytest.raises(ProtocolError):
        parse_mountd_request(data)


def test_reasons_are_the_documented_strings() -> None:
    assert {r.value for r in MountReason} == {
        "not_installed", "unknown_key", "bad_signature", "corrupted", "rollback", "bad_image", "id_mismatch",
        "mount_failed", "not_permitted", "bad_request"}


def test_replies_round_trip_through_the_frame() -> None:
    for reply in (MountError(app_id="a.b.c", reason=MountReason.ROLLBACK, message="older"),
                  AppMounted(app_id="a.b.c", version="1", root_hash="ab" * 32, mount_path="/run/weft/apps/a.b.c",
                             publisher="cd" * 16)):
        frame = encode_frame(reply)
        (length,) = LENGTH.unpack(frame[:4])
        assert parse_mountd_reply(decode_body(frame[4:4 + length])) == reply
    assert decode_body(encode_frame(MountError(app_id="", reason=MountReason.CORRUPTED, message="x"))[4:])[
        "reason"] == "corrupted"


def _read(data: bytes) -> bytes | None:
    async def run() -> bytes | None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await read_mountd_request(reader)
    return asyncio.run(run())


def test_request_frames_are_capped() -> None:
    body = msgpack.packb({"type": "LIST_MOUNTS"})
    assert _read(LENGTH.pack(len(body)) + body) == body
    assert _read(b"") is None
    with pytest.raises(FrameTooLarge):
        _read(LENGTH.pack(MOUNTD_MAX_REQUEST_BYTES + 1))
    with pytest.raises(ProtocolError):
        _read(LENGTH.pack(10) + b"abc")  # closed inside the frame
