"""What a session may use, derived once from its manifest: the one place capabilities are mapped.

`fs:*:app-data` → the app's data dir (outside the package) at guest `/data`;
`fs:*:xdg-documents` → the user's Documents dir at guest `/xdg/documents` (when it exists).
`fs:read:*` roots are read-only both as WASI preopens and in the file portal; when both
`read` and `rw` are granted for a root, `rw` wins. `net:fetch:<host>` entries form the
fetch allowlist; without one there is no network at all; only an entry naming the host (not
`*`) lets it resolve to a loopback, private or link-local address.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict

from weft.manifest import Manifest
from weft.store import StorePaths


class Root(BaseModel):
    """A host directory the guest sees at `guest`."""

    model_config = ConfigDict(frozen=True)
    host: Path
    guest: str
    writable: bool

    def host_path(self, guest_path: str) -> Path | None:
        """The host path for a guest path under this root (lexical; the portal resolves safely)."""
        inner = PurePosixPath(guest_path)
        if inner != PurePosixPath(self.guest) and PurePosixPath(self.guest) not in inner.parents:
            return None
        return self.host / inner.relative_to(self.guest)


class Grants(BaseModel):
    model_config = ConfigDict(frozen=True)
    app_id: str
    roots: tuple[Root, ...]
    fetch_hosts: frozenset[str]
    notifications: bool
    clipboard_read: bool
    clipboard_write: bool

    @classmethod
    def from_manifest(cls, manifest: Manifest, store: StorePaths, documents: Path | None, *,
                      publisher: str) -> Grants:
        """`publisher`: who signed the package (weft.store); the app-data dir is bound to it."""
        roots: list[Root] = []
        if manifest.grants("fs:rw:app-data") or manifest.grants("fs:read:app-data"):
            data_dir = store.app_data_dir(manifest.app_id, publisher)
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            roots.append(Root(host=data_dir, guest="/data", writable=manifest.grants("fs:rw:app-data")))
        wants_documents = manifest.grants("fs:rw:xdg-documents") or manifest.grants("fs:read:xdg-documents")
        if wants_documents and documents is not None and documents.is_dir():
            roots.append(Root(host=documents, guest="/xdg/documents",
                              writable=manifest.grants("fs:rw:xdg-documents")))
        return cls(
            app_id=manifest.app_id,
            roots=tuple(roots),
            fetch_hosts=manifest.fetch_hosts,
            notifications=manifest.grants("sys:notifications"),
            clipboard_read=manifest.grants("sys:clipboard:read"),
            clipboard_write=manifest.grants("sys:clipboard:write"),
        )

    def may_fetch(self, host: str) -> bool:
        return "*" in self.fetch_hosts or host.lower() in self.fetch_hosts

    def names_host(self, host: str) -> bool:
        """The allowlist names `host` itself (not through `*`): only then may it be a non-public address."""
        return host.lower() in self.fetch_hosts

    def root_for(self, guest_path: str) -> tuple[Root, Path] | None:
        for root in self.roots:
            host = root.host_path(guest_path)
            if host is not None:
                return root, host
        return None
