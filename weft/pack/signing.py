"""Package signatures, exactly the reference scheme (§2.5) so existing signatures verify.

digest = SHA-256 over "<rel>\\t<sha256 hex>\\n" for every file sorted by path, skipping the
top-level signature.sig; the signature is Ed25519 over the 32 raw digest bytes, stored as
128 lowercase hex chars without a newline.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from weft.errors import WeftError
from weft.manifest import SIGNATURE_NAME
from weft.pack.tree import PackageEntryMissing, read_inside, require_clean_name, walk_package

MAX_SIGNATURE_FILE_BYTES = 4096  # 128 hex chars; whitespace around them is tolerated


class SignatureError(WeftError):
    """The package is unsigned, or its signature does not verify."""


def listing_digest(entries: Iterable[tuple[str, str]]) -> bytes:
    """SHA-256 of the canonical text for (relative path, file SHA-256 hex) pairs.

    Unambiguous only for clean names (no tab, newline or other control character), so others
    are refused here too, whatever produced the listing."""
    ordered = sorted(((require_clean_name(rel), digest) for rel, digest in entries),
                     key=lambda entry: entry[0].encode("utf-8"))
    return hashlib.sha256("".join(f"{rel}\t{digest}\n" for rel, digest in ordered).encode("utf-8")).digest()


def bundle_digest(package_dir: str | os.PathLike[str]) -> bytes:
    # Each file is hashed from the descriptor the walk opened and checked, while it stands on it.
    return listing_digest((f.rel, f.read_into()) for f in walk_package(package_dir) if f.rel != SIGNATURE_NAME)


def sign_package(package_dir: str | os.PathLike[str], key: SigningKey) -> Path:
    signature = key.sign(bundle_digest(package_dir)).signature
    path = Path(package_dir) / SIGNATURE_NAME
    # A fresh temporary file (O_EXCL), then a rename: neither writes through a planted symlink.
    fd, temporary = tempfile.mkstemp(prefix=f".{SIGNATURE_NAME}.", dir=package_dir)
    try:
        with open(fd, "w", encoding="ascii") as out:
            out.write(signature.hex())
            os.fchmod(fd, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return path


def read_signature(package_dir: str | os.PathLike[str]) -> bytes:
    """The signature bytes, read like any package file (never through a symlink leading out)."""
    try:
        data = read_inside(package_dir, SIGNATURE_NAME, MAX_SIGNATURE_FILE_BYTES + 1)
    except PackageEntryMissing:
        raise SignatureError(f"package is not signed ({SIGNATURE_NAME} missing)") from None
    try:
        if len(data) > MAX_SIGNATURE_FILE_BYTES:
            raise ValueError
        raw = bytes.fromhex(data.decode("ascii").strip())
    except ValueError:  # UnicodeDecodeError is one
        raise SignatureError("decode signature: expected 128 hex chars") from None
    if len(raw) != 64:
        raise SignatureError("signature must be 64 bytes")
    return raw


def verify_package(package_dir: str | os.PathLike[str], key: VerifyKey) -> None:
    signature = read_signature(package_dir)
    try:
        key.verify(bundle_digest(package_dir), signature)
    except BadSignatureError:
        raise SignatureError("INVALID signature") from None
