"""The manifest inside a `.wapp` image, trusted through its signed footer alone (no mount).

The store listing (weft.store) describes an image by the `wapp.toml` inside it, read with the
small EROFS reader (weft.verity.erofs) through the descriptor the footer was read from. That
manifest is trusted only because the footer is signed by a trusted key and the manifest's
SHA-256 is the footer's `manifest_sha256`; the rest of the data and the hash tree are not read
here — `weft-pack install` (`verify_image`) checks every block, and weft-mountd's dm-verity
device checks every block it reads. Until then the EROFS structures are unverified input,
which the reader bounds (the footer's data size, MAX_MANIFEST_BYTES).
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from nacl.signing import VerifyKey
from pydantic import BaseModel, ConfigDict

from weft.errors import WeftError
from weft.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, Manifest, ManifestError, parse_manifest
from weft.pack.footer import Footer, SignedFooter, manifest_digest, read_footer_fd, verify_footer_signature
from weft.verity.erofs import ErofsError, read_erofs_file


class ImageManifestError(WeftError):
    """The manifest inside an image is missing, unreadable, or not the one the footer names."""


class TrustedImage(BaseModel):
    """An image's signed footer (its signature checked) and the manifest the footer vouches for."""

    model_config = ConfigDict(frozen=True)
    signed: SignedFooter
    manifest: Manifest

    @property
    def footer(self) -> Footer:
        return self.signed.footer


def read_trusted_manifest(path: Path, keys: Sequence[VerifyKey]) -> TrustedImage:
    """Footer, its signature by one of `keys`, and the manifest inside whose digest it names;
    FooterError, FooterSignatureError, ImageManifestError or ErofsError say what failed."""
    try:  # O_NONBLOCK: a FIFO planted in a store must not hang the listing
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        what = "is a symbolic link, not an image" if exc.errno == errno.ELOOP else f"cannot be read: {exc.strerror}"
        raise ImageManifestError(f"{path} {what}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        what = "a directory (a package directory is not an image)" if stat.S_ISDIR(mode) else "not a regular file"
        raise ImageManifestError(f"{path} is {what}")
    with open(fd, "rb") as fh:
        signed = read_footer_fd(fd, str(path))
        verify_footer_signature(signed, keys)
        return TrustedImage(signed=signed, manifest=inner_manifest(fh, signed.footer))


def inner_manifest(image: str | os.PathLike[str] | BinaryIO, footer: Footer) -> Manifest:
    """The `wapp.toml` inside the image's EROFS data, if it is the one `footer` names (by digest,
    id and version); ImageManifestError otherwise."""
    try:
        raw = read_erofs_file(image, MANIFEST_NAME, image_size=footer.data_size, max_bytes=MAX_MANIFEST_BYTES)
        if manifest_digest(raw) != footer.manifest_sha256:
            raise ImageManifestError(f"the {MANIFEST_NAME} inside the image does not match the footer's "
                                     f"manifest digest")
        manifest = parse_manifest(raw.decode("utf-8"))
    except (ErofsError, ManifestError, UnicodeDecodeError) as exc:
        raise ImageManifestError(f"the {MANIFEST_NAME} inside the image is unusable: {exc}") from None
    if (manifest.app_id, manifest.package.version) != (footer.app_id, footer.version):
        raise ImageManifestError(f"mismatched id: the footer says {footer.app_id} {footer.version}, the manifest "
                                 f"inside says {manifest.app_id} {manifest.package.version}")
    return manifest
