"""`weft:app/fetch`: HTTP(S) to allowlisted hosts only, with time and size limits.

Redirects are not followed (a 3xx comes back as a response), so a redirect cannot lead
outside the allowlist; proxies from the environment are ignored for the same reason.
HTTP error statuses are responses too (the reference turned them into errors).
"""
from __future__ import annotations

import urllib.error
import urllib.request
from urllib.parse import urlsplit

from pydantic import BaseModel

from weft.daemons.runtime.grants import Grants

TIMEOUT_S = 10.0
MAX_BODY_BYTES = 4 << 20
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class FetchDenied(Exception):
    """The request is refused before anything goes on the network; the text goes to the guest."""


class FetchResponse(BaseModel):
    status: int
    content_type: str
    body: bytes


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def check_request(grants: Grants, url: str, method: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchDenied(f"only http and https URLs with a host are allowed, not {url[:200]!r}")
    if not grants.may_fetch(parts.hostname):
        raise FetchDenied(f"capability 'net:fetch:{parts.hostname}' not granted")
    if method.upper() not in METHODS:
        raise FetchDenied(f"method {method[:20]!r} is not allowed")


def _read_limited(response) -> bytes:  # type: ignore[no-untyped-def]
    body = response.read(MAX_BODY_BYTES + 1)
    if len(body) > MAX_BODY_BYTES:
        raise FetchDenied(f"response body larger than {MAX_BODY_BYTES} bytes")
    return body


def fetch(grants: Grants, url: str, method: str, headers: list[tuple[str, str]], body: bytes | None) -> FetchResponse:
    check_request(grants, url, method)
    if body is not None and len(body) > MAX_BODY_BYTES:
        raise FetchDenied(f"request body larger than {MAX_BODY_BYTES} bytes")
    request = urllib.request.Request(url, data=body, method=method.upper(), headers=dict(headers))
    try:
        response = _OPENER.open(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:  # 3xx/4xx/5xx: still a response
        response = exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise FetchDenied(f"fetch failed: {getattr(exc, 'reason', exc)}") from None
    with response:
        content_type = response.headers.get_content_type() if response.headers else "text/plain"
        return FetchResponse(status=response.status, content_type=content_type, body=_read_limited(response))
