"""`weft-system://shell/…`: the shell page's files, from this package, and nothing else."""
from __future__ import annotations

from importlib import resources
from urllib.parse import urlsplit

from weft.daemons.webshell.csp import SYSTEM_CSP
from weft.daemons.webshell.webkit import Served

SCHEME = "weft-system"
ORIGIN = "weft-system://shell"
FILES = {"/": ("index.html", "text/html"), "/index.html": ("index.html", "text/html"),
         "/shell.css": ("shell.css", "text/css"),
         "/shell.js": ("shell.js", "text/javascript")}


def serve(uri: str) -> Served:
    parts = urlsplit(uri)
    found = FILES.get(parts.path or "/") if parts.scheme == SCHEME and parts.netloc == "shell" else None
    if found is None:
        return Served(404, b"not found\n", "text/plain", SYSTEM_CSP)
    name, content_type = found
    body = resources.files("weft.daemons.shell").joinpath("assets", name).read_bytes()
    return Served(200, body, content_type, SYSTEM_CSP)
