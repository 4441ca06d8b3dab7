"""Content-Security-Policy of the shells' pages, and the hashes that let a package's own inline code run.

Both pages may load only from their own origin (the registered scheme) and may not connect
anywhere: the page talks to its Python side through the script message handler alone. An app
page's inline `<script>` and `<style>` elements are allowed by their SHA-256 hash, computed
when the file is served: the package's own code runs (it is as trusted as its `.js` files),
while markup injected at run time (an inline handler, a `<script>` built from data) does not.
"""
from __future__ import annotations

import base64
import hashlib
from html.parser import HTMLParser

SYSTEM_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
              "connect-src 'none'; object-src 'none'; frame-src 'none'; base-uri 'none'; form-action 'none'")


class _InlineCode(HTMLParser):
    """The text of every inline script and style element, exactly as the browser hashes it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._open: list[str] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script" and not any(name == "src" for name, _ in attrs):
            self._open, self._text = self.scripts, []
        elif tag == "style":
            self._open, self._text = self.styles, []

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._open is not None and tag in ("script", "style"):
            self._open.append("".join(self._text))
            self._open = None


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def app_csp(html: bytes | None) -> str:
    """The app page's policy; `html` (an HTML document being served) adds its inline code's hashes."""
    scripts: list[str] = []
    styles: list[str] = []
    if html is not None:
        parser = _InlineCode()
        parser.feed(html.decode("utf-8", errors="replace"))
        parser.close()
        scripts = sorted({_hash(text) for text in parser.scripts})
        styles = sorted({_hash(text) for text in parser.styles})
    return (f"default-src 'self'; script-src 'self' {' '.join(scripts)}; style-src 'self' {' '.join(styles)}; "
            "img-src 'self' data:; media-src 'self'; font-src 'self'; connect-src 'none'; object-src 'none'; "
            "frame-src 'none'; worker-src 'none'; base-uri 'none'; form-action 'none'").replace("  ", " ")
