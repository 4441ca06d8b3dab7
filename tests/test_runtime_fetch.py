"""`weft:app/fetch` against hostile servers and hostile guests: errors for the guest, never a dead runtime.

Every server here listens on 127.0.0.1 only and answers a bounded number of bytes.
"""
from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from platform_support import Env, RuntimeUnderTest, with_capabilities

from weft.daemons.runtime import fetch
from weft.daemons.runtime.grants import Grants

Answer = bytes | Callable[[socket.socket], None]


class RawServer:
    """Answers each request on 127.0.0.1 with canned bytes chosen by the request path, then closes."""

    def __init__(self, answers: dict[str, Answer]):
        self.answers = answers
        self.heads: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):  # the client gave up first: what several tests want
                    self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        self.heads.append(head)
        answer = self.answers[head.split(b" ", 2)[1].decode()]
        if callable(answer):
            answer(conn)
        else:
            conn.sendall(answer)

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()


def _dribble(conn: socket.socket) -> None:
    """A valid response, one byte every 50 ms: each read is quick, the whole never ends in time."""
    for byte in b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"z" * 200:
        conn.sendall(bytes([byte]))
        time.sleep(0.05)


OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
MALFORMED: dict[str, Answer] = {
    "/banner": b"SSH-2.0-OpenSSH_9.6\r\n",
    "/garbage-status": b"HTTP/1.1 abc OK\r\n\r\n",
    "/status-out-of-range": b"HTTP/1.1 99999 Big\r\n\r\n",
    "/binary": bytes(range(256)) * 4,
    "/nothing": b"",
    "/too-many-headers": b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 150 + b"\r\n",
    "/huge-header-line": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    "/huge-status-line": b"HTTP/1.1 200 " + b"O" * 70_000 + b"\r\n\r\n",
    "/bad-chunk-size": OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "/short-chunk": OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\nffff\r\nshort",
    "/short-body": OK_HEAD + b"Content-Length: 100\r\n\r\nshort",
    "/endless-continue": b"HTTP/1.1 100 Continue\r\n\r\n" * 2000,
}
ANSWERS: dict[str, Answer] = {
    **MALFORMED,
    "/": OK_HEAD + b"Content-Length: 5\r\n\r\nhello",
    "/chunked": OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "/claims-huge": OK_HEAD + b"Content-Length: 99999999999\r\n\r\nx",
    "/slow": _dribble,
}


@pytest.fixture
def server() -> Iterator[RawServer]:
    running = RawServer(ANSWERS)
    yield running
    running.close()


def _grants(*hosts: str) -> Grants:
    return Grants(app_id="org.weft.test.fetch", roots=(), fetch_hosts=frozenset(hosts), notifications=False,
                  clipboard_read=False, clipboard_write=False)


LOCAL = _grants("127.0.0.1")


def test_a_wellformed_server_still_works(server: RawServer) -> None:
    response = fetch.fetch(LOCAL, server.url("/"), "GET", [("X-App", "1")], None)
    assert (response.status, response.content_type, response.body) == (200, "text/plain", b"hello")
    assert fetch.fetch(LOCAL, server.url("/chunked"), "GET", [], None).body == b"hello"
    head = server.heads[0].decode().lower()
    assert f"host: 127.0.0.1:{server.port}\r\n" in head and "x-app: 1\r\n" in head


@pytest.mark.parametrize("path", sorted(MALFORMED))
def test_malformed_responses_are_errors_for_the_guest(server: RawServer, path: str) -> None:
    with pytest.raises(fetch.FetchDenied, match=r"^fetch failed: "):
        fetch.fetch(LOCAL, server.url(path), "GET", [], None)


def test_a_body_announced_too_large_is_refused_before_reading(server: RawServer) -> None:
    with pytest.raises(fetch.FetchDenied, match="response body larger than"):
        fetch.fetch(LOCAL, server.url("/claims-huge"), "GET", [], None)


def test_the_whole_exchange_has_a_deadline(server: RawServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch, "DEADLINE_S", 1.0)
    started = time.monotonic()
    with pytest.raises(fetch.FetchDenied, match="no complete response within 1 s"):
        fetch.fetch(LOCAL, server.url("/slow"), "GET", [], None)
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("name", ["Host", "hOsT", "Content-Length", "Transfer-Encoding", "Connection"])
def test_the_guest_cannot_set_host_or_framing_headers(server: RawServer, name: str) -> None:
    with pytest.raises(fetch.FetchDenied, match="is set by the runtime"):
        fetch.fetch(LOCAL, server.url("/"), "GET", [(name, "evil.example")], None)
    assert server.heads == []  # refused before connecting


@pytest.mark.parametrize("header", [("X-A", "b\r\nHost: evil"), ("Bad Name", "x"), ("X-Nul", "a\0b"),
                                    ("X-Long", "v" * 9000)])
def test_malformed_request_headers_are_refused(server: RawServer, header: tuple[str, str]) -> None:
    with pytest.raises(fetch.FetchDenied, match="malformed request header"):
        fetch.fetch(LOCAL, server.url("/"), "GET", [header], None)
    assert server.heads == []


def test_a_wildcard_does_not_reach_loopback(server: RawServer) -> None:
    with pytest.raises(fetch.FetchDenied, match=re.escape("not a public address; only a 'net:fetch:127.0.0.1'")):
        fetch.fetch(_grants("*"), server.url("/"), "GET", [], None)
    with pytest.raises(fetch.FetchDenied, match="not a public address"):
        fetch.fetch(_grants("*"), server.url("/", host="localhost"), "GET", [], None)
    assert server.heads == []


def test_an_explicit_entry_reaches_loopback(server: RawServer) -> None:
    assert fetch.fetch(_grants("localhost"), server.url("/", host="localhost"), "GET", [], None).body == b"hello"
    assert f"host: localhost:{server.port}\r\n" in server.heads[0].decode().lower()


def test_the_address_checked_is_the_address_connected(server: RawServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebinding name answers a public address first and loopback after; only one lookup is made."""
    answers = iter(["93.184.216.34", "127.0.0.1", "127.0.0.1"])
    lookups: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def rebinding(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        if host != "rebind.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (next(answers), port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    monkeypatch.setattr(fetch, "TIMEOUT_S", 0.5)
    # `*` and a public first answer: the connection goes to that address (nothing listens
    # there from this sandbox), never to the loopback a second lookup would give.
    with pytest.raises(fetch.FetchDenied, match="fetch failed"):
        fetch.fetch(_grants("*"), f"http://rebind.test:{server.port}/", "GET", [], None)
    assert lookups == ["rebind.test"]
    assert server.heads == []
    # `*` and a loopback answer: refused before connecting.
    with pytest.raises(fetch.FetchDenied, match="not a public address"):
        fetch.fetch(_grants("*"), f"http://rebind.test:{server.port}/", "GET", [], None)
    assert server.heads == []
    # The name itself on the allowlist: loopback allowed, and the Host header keeps the name.
    assert fetch.fetch(_grants("rebind.test"), f"http://rebind.test:{server.port}/", "GET", [], None).body == b"hello"
    assert lookups == ["rebind.test"] * 3
    assert f"host: rebind.test:{server.port}\r\n" in server.heads[0].decode().lower()


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                                     "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::",
                                     "fe80::1", "fc00::1", "::ffff:127.0.0.1", "ff02::1", "2001:db8::1"])
def test_non_public_addresses(address: str) -> None:
    assert not fetch.is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses(address: str) -> None:
    assert fetch.is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("url, message", [
    ("http://user:pw@127.0.0.1/", "credentials in the URL"),
    ("http://127.0.0.1:99999/", "bad URL"),
    ("ftp://127.0.0.1/", "only http and https"),
])
def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(fetch.FetchDenied, match=message):
        fetch.fetch(LOCAL, url, "GET", [], None)


# -- through a real guest: the session survives ------------------------------------------------

def test_a_hostile_server_cannot_end_the_session(env: Env, built_apps: dict[str, Path], tmp_path: Path,
                                                 runtime_factory: Callable[..., RuntimeUnderTest],
                                                 server: RawServer) -> None:
    env.install(with_capabilities(built_apps["org.weft.test.probe"], tmp_path / "src", "org.weft.test.fetcher",
                                  ["net:fetch:127.0.0.1"]))
    runtime = runtime_factory("org.weft.test.fetcher")
    runtime.wait_ready()
    for path in ("/banner", "/too-many-headers", "/huge-header-line", "/bad-chunk-size", "/garbage-status"):
        assert runtime.ask(f"fetch:{server.url(path)}").startswith("err: fetch failed: "), path
    assert runtime.ask(f"fetch:{server.url('/')}") == "200 text/plain hello"
    assert runtime.close() == 0
    assert "Traceback" not in runtime.log()


def test_a_wildcard_guest_cannot_reach_loopback(env: Env, built_apps: dict[str, Path], tmp_path: Path,
                                                runtime_factory: Callable[..., RuntimeUnderTest],
                                                server: RawServer) -> None:
    env.install(with_capabilities(built_apps["org.weft.test.probe"], tmp_path / "src", "org.weft.test.anyhost",
                                  ["net:fetch:*"]))
    runtime = runtime_factory("org.weft.test.anyhost")
    runtime.wait_ready()
    assert "not a public address" in runtime.ask(f"fetch:{server.url('/')}")
    assert server.heads == []
