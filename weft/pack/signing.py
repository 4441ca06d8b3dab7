"""Package signatures, exactly the reference scheme (§2.5) so existing signatures verify.

digest = SHA-256 over "<rel>\\t<sha256 hex>\\n" for every file sorted by path, skipping the
top-level signature.sig; the signature is Ed25519 over the 32 raw digest bytes, stored as
128 lowercase hex chars without a newline.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from weft.errors import WeftError
from weft.manifest import SIGNATURE_NAME
from weft.pack.tree import require_clean_name, walk_package


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
    temporary = path.with_name(f".{SIGNATURE_NAME}.tmp")
    temporary.write_text(signature.hex(), encoding="ascii")
    os.replace(temporary, path)  # replaces a symlink named signature.sig instead of writing through it
    return path


def read_signature(package_dir: str | os.PathLike[str]) -> bytes:
    path = Path(package_dir) / SIGNATURE_NAME
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except FileNotFoundError:
        raise SignatureError(f"package is not signed ({SIGNATURE_NAME} missing)") from None
    except OSError as exc:
        raise SignatureError(f"cannot read {path}: {exc.strerror}") from None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
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
