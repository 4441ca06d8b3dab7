"""Ed25519 key files as the reference writes them: 64 hex chars, no newline.

Deviation (reference §11.1 item 4): the private key is created with mode 0600, and a private
key that other users can read is refused.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from weft.errors import WeftError

DEFAULT_KEY_STEM = "weft-sign"  # weft-sign.key (private, 0600) + weft-sign.pub


class KeyFileError(WeftError):
    """A key file is missing, malformed or unsafe."""


def generate_keypair(out_dir: str | os.PathLike[str], stem: str = DEFAULT_KEY_STEM) -> tuple[Path, Path]:
    """`<stem>.key` (mode 0600) and `<stem>.pub` in `out_dir`; never overwrites a key."""
    out = Path(out_dir)
    private, public = out / f"{stem}.key", out / f"{stem}.pub"
    for path in (private, public):
        if path.exists():
            raise KeyFileError(f"{path} already exists; refusing to overwrite a key")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create key directory {out}: {exc.strerror}") from None
    key = SigningKey.generate()
    _write_new(private, bytes(key).hex(), 0o600)
    _write_new(public, bytes(key.verify_key).hex(), 0o644)
    return private, public


def _write_new(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what we chose
        fh.write(text)


def _read_hex(path: str | os.PathLike[str], what: str, size: int) -> bytes:
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace").strip()
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {os.fspath(path)}: {exc.strerror}") from None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f"decode {what}: expected {2 * size} hex chars") from None
    if len(raw) != size:
        raise KeyFileError(f"{what} must be {size} bytes")
    return raw


def load_signing_key(path: str | os.PathLike[str]) -> SigningKey:
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise KeyFileError(f"cannot read signing key {os.fspath(path)}: {exc.strerror}") from None
    if mode & 0o077:
        raise KeyFileError(f"signing key {os.fspath(path)} is readable by other users "
                        f"(mode {mode & 0o777:o}); run: chmod 600 {os.fspath(path)}")
    return SigningKey(_read_hex(path, "signing key", 32))


def load_verify_key(path: str | os.PathLike[str]) -> VerifyKey:
    raw = _read_hex(path, "public key", 32)
    try:
        return VerifyKey(raw)
    except (CryptoError, ValueError, TypeError):
        raise KeyFileError("invalid public key bytes") from None


def key_id(key: VerifyKey) -> str:
    """A short, stable name for a public key: SHA-256 of its 32 bytes, hex."""
    return hashlib.sha256(bytes(key)).hexdigest()
