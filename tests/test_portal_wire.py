"""The file portal's JSON lines (weft/daemons/protocol.py, section weft-file-portal): the exact bytes
both ends exchange, so a model change cannot silently change the wire."""
from __future__ import annotations

import pytest

from weft.daemons.protocol import (
    PortalErrorReply,
    PortalList,
    PortalListReply,
    PortalRead,
    PortalReadReply,
    PortalWrite,
    ProtocolError,
    decode_portal_reply,
    decode_portal_request,
    encode_portal_reply,
    encode_portal_request,
)


def test_requests_are_one_json_object_per_line() -> None:
    assert encode_portal_request(PortalRead(path="/d/a")) == b'{"op": "read", "path": "/d/a"}\n'
    assert encode_portal_request(PortalWrite(path="/d/a", data_b64="eA==")) == \
        b'{"op": "write", "path": "/d/a", "data_b64": "eA=="}\n'
    assert encode_portal_request(PortalList(path="/d")) == b'{"op": "list", "path": "/d"}\n'
    for request in (PortalRead(path="/d/a"), PortalWrite(path="/d/a", data_b64="eA=="), PortalList(path="/d")):
        assert decode_portal_request(encode_portal_request(request)) == request


def test_replies_as_the_reference_sends_them() -> None:
    assert encode_portal_reply(None) == b"null\n"  # a write succeeded
    assert encode_portal_reply(PortalReadReply(data_b64="eA==")) == b'{"data_b64": "eA=="}\n'
    assert encode_portal_reply(PortalListReply(entries=["a", "b"])) == b'{"entries": ["a", "b"]}\n'
    assert encode_portal_reply(PortalListReply(entries=[], skipped_non_utf8=2)) == \
        b'{"entries": [], "skipped_non_utf8": 2}\n'
    assert encode_portal_reply(PortalErrorReply(error="no")) == b'{"error": "no"}\n'
    for reply in (None, PortalReadReply(data_b64="eA=="), PortalListReply(entries=["a"]), PortalErrorReply(error="no")):
        assert decode_portal_reply(encode_portal_reply(reply)) == reply


@pytest.mark.parametrize("line", [b"not json\n", b'{"op": "delete", "path": "/d"}\n', b'{"op": "read"}\n',
                                  b'{"op": "read", "path": "/d", "extra": 1}\n', b'["read", "/d"]\n',
                                  b'{"op": "read", "path": "' + b"a" * 4097 + b'"}\n'])
def test_a_bad_request_is_a_protocol_error(line: bytes) -> None:
    with pytest.raises(ProtocolError, match=r"^bad request: "):
        decode_portal_request(line)


@pytest.mark.parametrize("line", [b"", b"{}\n", b'{"data_b64": 1}\n', b'{"entries": "a"}\n', b"[]\n"])
def test_a_malformed_reply_is_a_protocol_error(line: bytes) -> None:
    with pytest.raises(ProtocolError, match="malformed file portal reply"):
        decode_portal_reply(line)
