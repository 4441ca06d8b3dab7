"""The per-boot control token: a 0600 file in $XDG_RUNTIME_DIR/weft (a tmpfs, so per boot).

A WebSocket client must present it (or a session token) to connect. The file is reused
across appd restarts within a boot, so connected shells keep working; a file that is not
private to this user is replaced.
"""
from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

TOKEN_BYTES = 32


def load_or_create_boot_token(path: Path) -> str:
    try:
        st = path.lstat()
        private = stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600
        token = path.read_text().strip() if private else ""
        if len(token) >= TOKEN_BYTES:
            return token
        path.unlink()
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(TOKEN_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    return token


def new_session_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def same_token(presented: str, expected: str) -> bool:
    """Constant-time comparison, so response timing does not reveal how much of a token matched."""
    return hmac.compare_digest(presented.encode(), expected.encode())
