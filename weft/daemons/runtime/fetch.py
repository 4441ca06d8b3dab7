"""`weft:app/fetch`: HTTP(S) to allowlisted hosts only, with time and size limits.

- Redirects are not followed (a 3xx comes back as a response), so a redirect cannot lead
  outside the allowlist; no proxy is ever used. HTTP error statuses are responses too.
- The host is resolved once and every address is checked before use; the connection goes to
  a checked address, never through a second lookup (a DNS-rebinding answer cannot slip in
  between). Addresses that are not public unicast (loopback, private, link-local, shared,
  unspecified, multicast, reserved, IPv4-mapped...) are refused unless the allowlist names
  the host itself: `net:fetch:localhost` reaches 127.0.0.1, `net:fetch:*` never does.
- `Host` and the message-framing headers belong to the runtime: a guest header with one of
  those names is refused (not dropped), as are malformed names and values.
- Whatever the server sends (a non-HTTP banner, too many or too long header lines, bad
  chunking, a truncated body) ends as an error for the guest, never as an exception in the
  runtime. A watchdog shuts the connection down when the whole exchange exceeds DEADLINE_S,
  so a server dribbling bytes just within each socket timeout cannot hold the guest.
"""
from __future__ import annotations

import contextlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import SplitResult, urlsplit

from pydantic import BaseModel

from weft.daemons.runtime.grants import Grants

TIMEOUT_S = 10.0  # each socket operation
DEADLINE_S = 30.0  # the whole exchange: connect, request, headers, body
MAX_BODY_BYTES = 4 << 20
MAX_REQUEST_HEADERS = 64
MAX_HEADER_BYTES = 8192
MAX_ADDRESSES = 8  # resolved addresses tried in turn
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
RUNTIME_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                             "proxy-connection", "upgrade", "te", "trailer"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field-name
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

Address = tuple[socket.AddressFamily, tuple[Any, ...]]  # (family, sockaddr) as getaddrinfo gives them


class FetchDenied(Exception):
    """The request was refused or failed; the text goes to the guest as `err(...)`."""


class FetchResponse(BaseModel):
    status: int
    content_type: str
    body: bytes


def is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable unicast: what `net:fetch:*` (or a name that is not an IP's own) may reach."""
    return address.is_global and not address.is_multicast


def check_request(grants: Grants, url: str, method: str, headers: list[tuple[str, str]]) -> SplitResult:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchDenied(f"only http and https URLs with a host are allowed, not {url[:200]!r}")
    if parts.username is not None or parts.password is not None:
        raise FetchDenied("credentials in the URL are not supported; send an Authorization header")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise FetchDenied(f"bad URL: {exc}") from None
    if not grants.may_fetch(parts.hostname):
        raise FetchDenied(f"capability 'net:fetch:{parts.hostname}' not granted")
    if method.upper() not in METHODS:
        raise FetchDenied(f"method {method[:20]!r} is not allowed")
    if len(headers) > MAX_REQUEST_HEADERS:
        raise FetchDenied(f"more than {MAX_REQUEST_HEADERS} request headers")
    for name, value in headers:
        if name.lower() in RUNTIME_HEADERS:
            raise FetchDenied(f"header {name!r} is set by the runtime, not the app")
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value) or len(name) + len(value) > MAX_HEADER_BYTES:
            raise FetchDenied(f"malformed request header {name[:100]!r}")
    return parts


def resolve(host: str, port: int, named_explicitly: bool) -> list[Address]:
    """The host's addresses that may be used; one lookup, checked here, connected to as they are."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise FetchDenied(f"fetch failed: cannot resolve {host}: {getattr(exc, 'strerror', None) or exc}") from None
    usable: list[Address] = []
    refused = []
    for family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])  # drop an IPv6 scope id
        if named_explicitly or is_public(address):
            usable.append((family, sockaddr))
        else:
            refused.append(address)
    if not usable:
        raise FetchDenied(f"{host} resolves to {refused[0]}, which is not a public address; only a "
                          f"'net:fetch:{host}' capability (not '*') allows it")
    return usable[:MAX_ADDRESSES]


class _Deadline:
    """Shuts the connection down once the exchange has run for DEADLINE_S (through a duplicate
    descriptor, so it also works under TLS): the blocked read then fails at once."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.expired = False
        self._watched: socket.socket | None = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()  # the timer never shuts down a descriptor number reused after cancel()

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def watch(self, sock: socket.socket) -> None:
        self._watched = sock.dup()
        self._timer = threading.Timer(max(self.remaining(), 0.0), self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            if self._watched is None:
                return  # cancelled
            self.expired = True
            with contextlib.suppress(OSError):  # already closed by the other side
                self._watched.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            if self._watched is not None:
                self._watched.close()
                self._watched = None


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP connection to checked addresses: `self.host` stays the name (Host header, TLS)."""

    def __init__(self, host: str, port: int, addresses: list[Address], deadline: _Deadline):
        super().__init__(host, port, timeout=TIMEOUT_S)
        self.addresses = addresses
        self.deadline = deadline

    def connect(self) -> None:
        failure: OSError = TimeoutError("no time left to connect")
        for family, sockaddr in self.addresses:
            if self.deadline.remaining() <= 0:
                break
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(min(TIMEOUT_S, self.deadline.remaining()))
            try:
                sock.connect(sockaddr)
            except OSError as exc:
                sock.close()
                failure = exc
                continue
            self.deadline.watch(sock)
            self.sock = self.wrap(sock)
            return
        raise failure

    def wrap(self, sock: socket.socket) -> socket.socket:
        return sock


class _PinnedTLSConnection(_PinnedConnection):
    default_port = http.client.HTTPS_PORT

    def wrap(self, sock: socket.socket) -> socket.socket:
        try:
            return ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def _read_body(response: http.client.HTTPResponse) -> bytes:
    if response.length is not None and response.length > MAX_BODY_BYTES:
        raise FetchDenied(f"response body larger than {MAX_BODY_BYTES} bytes")
    body = response.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise FetchDenied(f"response body larger than {MAX_BODY_BYTES} bytes")
    if response.length:  # Content-Length promised more than arrived before the server closed
        raise FetchDenied(f"fetch failed: response truncated ({response.length} bytes missing)")
    return body


def fetch(grants: Grants, url: str, method: str, headers: list[tuple[str, str]], body: bytes | None) -> FetchResponse:
    parts = check_request(grants, url, method, headers)
    if body is not None and len(body) > MAX_BODY_BYTES:
        raise FetchDenied(f"request body larger than {MAX_BODY_BYTES} bytes")
    host = parts.hostname
    assert host is not None  # check_request refused URLs without one
    https = parts.scheme == "https"
    port = parts.port or (http.client.HTTPS_PORT if https else http.client.HTTP_PORT)
    deadline = _Deadline(DEADLINE_S)
    addresses = resolve(host, port, grants.names_host(host))
    connection = (_PinnedTLSConnection if https else _PinnedConnection)(host, port, addresses, deadline)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    expired = FetchDenied(f"fetch failed: no complete response within {DEADLINE_S:g} s")
    try:
        connection.request(method.upper(), target, body=body, headers=dict(headers))
        response = connection.getresponse()
        result = FetchResponse(status=response.status, content_type=response.headers.get_content_type(),
                               body=_read_body(response))
    except (http.client.HTTPException, OSError, ValueError) as exc:
        if deadline.expired:
            raise expired from None
        reason = str(exc) or type(exc).__name__
        raise FetchDenied(f"fetch failed: {type(exc).__name__}: {reason[:300]}") from None
    finally:
        deadline.cancel()
        connection.close()
    if deadline.expired:  # the shutdown can also look like a (cut short) response
        raise expired
    return result
