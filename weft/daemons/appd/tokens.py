"""The per-boot control token: a 0600 file in $XDG_RUNTIME_DIR/weft (a tmpfs, so per boot).

A WebSocket client must present it (or a session token) to connect. The file is reused
across appd restarts within a boot, so connected shells keep working; a file that is not
private to this user (or a symlink, a FIFO...) is replaced, never followed.
"""
from __future__ import annotations

import hmac
import secrets

from weft.daemons.appd.runtime_dir import RuntimeDir

TOKEN_BYTES = 32


def load_or_create_boot_token(directory: RuntimeDir, name: str) -> str:
    """The token in `directory/name` if it is our private file, else a new one written there."""
    token = (directory.read_private(name) or "").strip()
    if len(token) >= TOKEN_BYTES:
        return token
    token = secrets.token_urlsafe(TOKEN_BYTES)
    directory.write_text(name, token)
    return token


def new_session_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def same_token(presented: str, expected: str) -> bool:
    """Constant-time comparison, so response timing does not reveal how much of a token matched."""
    return hmac.compare_digest(presented.encode(), expected.encode())
