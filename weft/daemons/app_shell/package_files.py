"""`weft-app://<app_id>/…`: files of one app package, resolved by the kernel beneath the package root.

The root is the verified mount `<WEFT_APPS_MOUNT_ROOT>/<app_id>` (WEFT OS), or, with
WEFT_APP_SOURCE=directory, the package directory the store resolves (weft.store), the same
rule appd launches by. Every request is opened with openat2(RESOLVE_BENEATH) relative to the
root's descriptor (weft.daemons.file_portal.openat2): `..`, absolute symlinks and symlinks
that climb out fail in the kernel, with no check-then-use race. Only regular files are served,
with a MIME type from a fixed table (a host's mime.types must not change what a page gets).
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from weft import settings
from weft.daemons.file_portal import Escape, openat2
from weft.errors import WeftError
from weft.manifest import Manifest, load_manifest
from weft.store import StorePaths

SCHEME = "weft-app"
MAX_FILE_BYTES = 32 << 20
MIME_TYPES = {
    ".html": "text/html", ".htm": "text/html", ".js": "text/javascript", ".mjs": "text/javascript",
    ".css": "text/css", ".json": "application/json", ".txt": "text/plain", ".svg": "image/svg+xml",
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif", ".webp": "image/webp",
    ".ico": "image/x-icon", ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf", ".otf": "font/otf",
    ".wasm": "application/wasm", ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".wav": "audio/wav",
    ".mp4": "video/mp4", ".webm": "video/webm",
}


def mime_type(path: str) -> str:
    return MIME_TYPES.get(PurePosixPath(path).suffix.lower(), "application/octet-stream")


def package_root(app_id: str, env: Mapping[str, str] | None = None) -> Path:
    """Where the session's package is, by the rule appd launched it with (WEFT_APP_SOURCE)."""
    if settings.APP_SOURCE.read(env) == "verified":
        return settings.APPS_MOUNT_ROOT.read(env) / app_id
    return StorePaths.from_env(env).resolve_package(app_id).path


@dataclass(frozen=True)
class Found:
    body: bytes
    content_type: str


class PackageFiles:
    def __init__(self, app_id: str, root: Path) -> None:
        self.app_id = app_id
        self.root = root
        try:
            self.manifest: Manifest = load_manifest(root)
        except OSError as exc:
            raise WeftError(f"cannot read the package of {app_id} at {root}: {exc.strerror}") from None
        if self.manifest.app_id != app_id:
            raise WeftError(f"the package at {root} is {self.manifest.app_id!r}, not {app_id!r}")
        try:
            self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise WeftError(f"cannot open the package of {app_id} at {root}: {exc.strerror}") from None

    @property
    def entry(self) -> str:
        return self.manifest.ui.entry

    @property
    def origin(self) -> str:
        return f"{SCHEME}://{self.app_id}"

    def inner_path(self, uri: str) -> str | None:
        """The package path a `weft-app://` URL names (the entry for `/`), or None if it is not this app's."""
        parts = urlsplit(uri)
        if parts.scheme != SCHEME or parts.netloc != self.app_id:
            return None
        path = unquote(parts.path).lstrip("/")
        if "\0" in path:
            return None
        return path or self.entry

    def read(self, inner: str) -> Found | None:
        """The file at `inner` beneath the root, or None (missing, escaping, not a regular file, too large)."""
        try:
            fd = openat2(self.fd, inner, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        except Escape:
            return None
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES, errno.EISDIR, errno.ENAMETOOLONG):
                return None
            raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE_BYTES:  # a directory, FIFO, device...
            os.close(fd)
            return None
        with os.fdopen(fd, "rb") as file:
            body = file.read(MAX_FILE_BYTES + 1)
        if len(body) > MAX_FILE_BYTES:
            return None
        return Found(body, mime_type(inner))
