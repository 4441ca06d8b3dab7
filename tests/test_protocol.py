"""The appd wire models and framings (reference §4.2-4.3, §4.9) — pure unit tests."""
from __future__ import annotations

import asyncio
import contextlib
import json

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from weft.daemons import protocol, relay


def frame_bytes(body: bytes) -> bytes:
    return len(body).to_bytes(4, "little") + body


def test_reference_byte_examples_decode():
    # QUERY_RUNNING in array form: length 15, then 91 AD "QUERY_RUNNING"
    raw = bytes.fromhex("0F000000") + b"\x91\xadQUERY_RUNNING"
    request = protocol.parse_request(protocol.decode_body(raw[4:]))
    assert isinstance(request, protocol.QueryRunning)
    assert raw[:4] == (15).to_bytes(4, "little")
    # TERMINATE_APP{session_id:5} in map form
    body = b"\x82\xa4type\xadTERMINATE_APP\xaasession_id\x05"
    assert protocol.parse_request(protocol.decode_body(body)) == protocol.TerminateApp(session_id=5)


def test_array_form_maps_fields_in_declaration_order():
    request = protocol.parse_request(["LAUNCH_APP", "org.weft.demo.counter", 0])
    assert request == protocol.LaunchApp(app_id="org.weft.demo.counter", surface_id=0)
    request = protocol.parse_request(["IPC_FORWARD", 3, "get"])
    assert request == protocol.IpcForward(session_id=3, payload="get")
    with pytest.raises(protocol.ProtocolError, match="too many fields"):
        protocol.parse_request(["QUERY_RUNNING", 1])


def test_replies_are_maps_with_a_type_tag():
    frame = protocol.encode_frame(protocol.LaunchAck(session_id=7, app_id="a.b.c"))
    assert msgpack.unpackb(frame[4:]) == {"type": "LAUNCH_ACK", "session_id": 7, "app_id": "a.b.c"}
    assert int.from_bytes(frame[:4], "little") == len(frame) - 4
    assert json.loads(protocol.encode_json(protocol.AppState(session_id=1, state=protocol.SessionState.STOPPED))) == {
        "type": "APP_STATE", "session_id": 1, "state": "stopped"}


@pytest.mark.parametrize("app_id", ["../../etc", "/abs/path", "com.example", "Com.Example.App", "a..b.c", ""])
def test_launch_validates_the_app_id(app_id):
    with pytest.raises(protocol.ProtocolError, match="invalid LAUNCH_APP"):
        protocol.parse_request({"type": "LAUNCH_APP", "app_id": app_id})


@pytest.mark.parametrize("data, message", [
    ({"type": "NOPE"}, "unknown request type"),
    ({"session_id": 1}, "unknown request type"),
    (["NOPE"], "unknown or missing request type"),
    ([], "unknown or missing request type"),
    ("QUERY_RUNNING", "must be a map or an array"),
    ({"type": "TERMINATE_APP", "session_id": 0}, "invalid TERMINATE_APP"),
    ({"type": "TERMINATE_APP", "session_id": "x"}, "invalid TERMINATE_APP"),
    ({"type": "IPC_FORWARD", "session_id": 1, "payload": "x" * (protocol.MAX_PAYLOAD_BYTES + 1)},
     "invalid IPC_FORWARD"),
])
def test_invalid_requests_are_protocol_errors(data, message):
    with pytest.raises(protocol.ProtocolError, match=message):
        protocol.parse_request(data)


def test_unknown_extra_fields_are_ignored_and_surface_id_is_optional():
    request = protocol.decode_json_request('{"type":"LAUNCH_APP","app_id":"org.weft.demo.counter","extra":1}')
    assert request == protocol.LaunchApp(app_id="org.weft.demo.counter")


def test_json_numbers_for_gesture_deltas():
    request = protocol.decode_json_request('{"type":"PANEL_GESTURE","gesture_type":0,"fingers":3,"dx":150,"dy":-4.5}')
    assert request == protocol.PanelGesture(gesture_type=0, fingers=3, dx=150.0, dy=-4.5)


def test_malformed_msgpack_is_a_protocol_error():
    with pytest.raises(protocol.ProtocolError, match="malformed msgpack"):
        protocol.decode_body(b"\xc1")
    with pytest.raises(protocol.ProtocolError, match="malformed msgpack"):
        protocol.decode_body(b"\x92\x01")  # truncated array
    with pytest.raises(protocol.ProtocolError, match=r"^malformed msgpack: nested too deeply$"):
        protocol.decode_body(b"\x91" * 100_000 + b"\xc0")  # msgpack's StackError says nothing


def _read(data: bytes) -> bytes | None:
    async def go() -> bytes | None:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await protocol.read_frame(reader)
    return asyncio.run(go())


def test_frame_reader_caps_the_declared_length_before_reading():
    with pytest.raises(protocol.FrameTooLarge):
        _read((protocol.MAX_FRAME_BYTES + 1).to_bytes(4, "little"))
    assert _read(b"") is None
    with pytest.raises(protocol.ProtocolError, match="inside a frame"):
        _read(frame_bytes(b"\x91\x90")[:-1])
    assert _read(frame_bytes(b"\x90")) == b"\x90"


@given(st.text(max_size=2000))
def test_any_payload_survives_the_relay_and_both_framings(payload):
    line = relay.encode_line(relay.Ipc(payload=payload))
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert relay.decode_line(line, relay.FromRuntime) == relay.Ipc(payload=payload)
    message = protocol.IpcMessage(session_id=1, payload=payload)
    assert protocol.parse_reply(protocol.decode_body(protocol.encode_frame(message)[4:])) == message
    assert protocol.parse_reply(json.loads(protocol.encode_json(message))) == message


def test_relay_rejects_unknown_and_oversized_lines():
    with pytest.raises(relay.RelayError):
        relay.decode_line(b'{"t":"launch","app_id":"org.weft.demo.counter","session_id":1,"memory_mib":64}\n',
                          relay.FromRuntime)  # only appd sends launch
    with pytest.raises(relay.RelayError, match="exceeds"):
        relay.decode_line(b"x" * (relay.MAX_LINE_BYTES + 1), relay.ToRuntime)
    with pytest.raises(relay.RelayError):
        relay.decode_line(b'{"t":"ready","extra":1}\n', relay.FromRuntime)


def _map_with_pairs(pairs: list[tuple[object, object]]) -> bytes:
    """A msgpack map body built from pairs, so keys may be arrays or maps (unhashable in Python)."""
    packer = msgpack.Packer(use_bin_type=True)
    return packer.pack_map_pairs(pairs)


@pytest.mark.parametrize("body", [
    msgpack.packb({"type": ["LAUNCH_APP"], "app_id": "org.weft.demo.counter"}),
    msgpack.packb({"type": {"a": 1}}),
    msgpack.packb({"type": 7}),
    msgpack.packb([["QUERY_RUNNING"]]),
    _map_with_pairs([(["type"], "QUERY_RUNNING")]),
    _map_with_pairs([("type", "QUERY_RUNNING"), ({"k": 1}, 2)]),
    _map_with_pairs([("type", "QUERY_RUNNING"), (1, 2), (b"raw", None)]),
])
def test_hostile_msgpack_requests_are_protocol_errors_or_requests(body):
    try:
        request = protocol.parse_request(protocol.decode_body(body))
    except protocol.ProtocolError:
        return
    assert isinstance(request, protocol.QueryRunning)  # only the last one is a valid request


@pytest.mark.parametrize("text", ['{"type": ["QUERY_RUNNING"]}', '{"type": {"x": 1}}', '{"type": null}', "[[1]]",
                                  "[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000])
def test_hostile_json_requests_are_protocol_errors(text):
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_json_request(text)


_scalars = st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | st.floats() | st.text(max_size=20) \
    | st.binary(max_size=20) | st.sampled_from(sorted(protocol.REQUEST_TYPES))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.lists(st.tuples(inner, inner), max_size=4).map(lambda pairs: ("map", pairs)), max_leaves=20)


def _pack(value: object, packer: msgpack.Packer) -> bytes:
    if isinstance(value, tuple) and value and value[0] == "map":
        out = packer.pack_map_header(len(value[1]))
        return out + b"".join(_pack(k, packer) + _pack(v, packer) for k, v in value[1])
    if isinstance(value, list):
        return packer.pack_array_header(len(value)) + b"".join(_pack(v, packer) for v in value)
    return packer.pack(value)


@given(_values | st.lists(st.tuples(st.just("type") | _values, _values), max_size=5).map(lambda p: ("map", p)))
def test_fuzzed_msgpack_requests_give_a_request_or_a_protocol_error(value):
    body = _pack(value, msgpack.Packer(use_bin_type=True))
    try:
        request = protocol.parse_request(protocol.decode_body(body))
    except protocol.ProtocolError:
        return
    assert isinstance(request, protocol.Message)


@given(st.binary(max_size=200))
def test_fuzzed_bytes_give_a_request_or_a_protocol_error(body):
    with contextlib.suppress(protocol.ProtocolError):
        protocol.parse_request(protocol.decode_body(body))


def test_payload_cap_is_in_utf8_bytes_so_every_ipc_message_fits_a_frame():
    largest = "\U0001f600" * (protocol.MAX_PAYLOAD_BYTES // 4)  # 4 bytes each: exactly at the cap
    assert protocol.IpcForward(session_id=1, payload=largest).payload == largest
    frame = protocol.encode_frame(protocol.IpcMessage(session_id=1, payload=largest))
    assert len(frame) < protocol.MAX_FRAME_BYTES
    with pytest.raises(protocol.ProtocolError, match="exceeds"):
        protocol.parse_request({"type": "IPC_FORWARD", "session_id": 1, "payload": largest + "x"})
    with pytest.raises(relay.RelayError):
        relay.decode_line(json.dumps({"t": "ipc", "payload": "\u00e9" * protocol.MAX_PAYLOAD_BYTES}).encode() + b"\n",
                          relay.FromRuntime)
    with pytest.raises(protocol.ProtocolError, match="invalid IPC_FORWARD"):  # a lone surrogate cannot be encoded
        protocol.decode_json_request('{"type":"IPC_FORWARD","session_id":1,"payload":"\\ud800"}')
