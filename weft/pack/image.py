"""`.wapp` app images: build (EROFS + dm-verity + signed footer), verify, inspect.

Builds are reproducible: the package is staged with normalised modes, `mkfs.erofs` gets a
fixed timestamp, a UUID derived from id and version, root ownership and no xattrs, and the
verity salt is derived from id, version and manifest digest. Two builds of the same package
with the same key are byte-identical.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import uuid as uuidlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey, VerifyKey

from weft.errors import WeftError
from weft.manifest import MANIFEST_NAME
from weft.pack.check import check_package
from weft.pack.footer import (
    BLOCK_SIZE,
    Footer,
    SignedFooter,
    VerityInfo,
    manifest_digest,
    read_footer,
    seal_footer,
    verify_footer_signature,
)
from weft.pack.image_manifest import ImageManifestError, inner_manifest
from weft.pack.keys import key_id
from weft.pack.tree import copy_package
from weft.proc import find_tool, run
from weft.store import IMAGE_SUFFIX
from weft.verity import VerityMismatch, VerityParams, format_hash, verify_hash

# Fixed namespace for the image UUID: uuid5(namespace, "<id>\n<version>").
UUID_NAMESPACE = uuidlib.UUID("6b1c3f9e-0a51-4d0e-9a6f-57e3f1c2b7d4")
MKFS_TIMEOUT_S = 600
# What build-image writes by default, `<id>-<version>.wapp` (a store keeps `<id>.wapp`, weft.store):
# ids never contain '-', so the first '-' splits the name unambiguously.
IMAGE_NAME_RE = re.compile(rf"^(?P<id>[a-z][a-z0-9.]*)-(?P<version>.+){re.escape(IMAGE_SUFFIX)}$")


class ImageError(WeftError):
    """An app image is missing, inconsistent or tampered with."""


def image_name(app_id: str, version: str) -> str:
    return f"{app_id}-{version}{IMAGE_SUFFIX}"


def image_uuid(app_id: str, version: str) -> uuidlib.UUID:
    return uuidlib.uuid5(UUID_NAMESPACE, f"{app_id}\n{version}")


def _say(message: str) -> None:
    logging.getLogger("weft.pack").info("build-image: %s", message)


def build_image(package_dir: str | os.PathLike[str], key: SigningKey, out: Path | None = None, *,
                force: bool = False, timestamp: int = 0,
                progress: Callable[[str], None] = _say) -> Path:
    """Build `<id>-<version>.wapp` from a package directory; returns the image path."""
    progress("checking package")
    manifest = check_package(package_dir)
    app_id, version = manifest.app_id, manifest.package.version
    out = out if out is not None else Path.cwd() / image_name(app_id, version)
    if out.exists() and not force:
        raise ImageError(f"{out} already exists (use --force to replace it)")
    mkfs = find_tool("mkfs.erofs", "install erofs-utils")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wapp-build-", dir=out.parent) as work:
        progress("staging files")
        staged = copy_package(package_dir, Path(work) / "root")
        if check_package(staged) != manifest:  # what gets imaged is the copy: check that too
            raise ImageError(f"{package_dir} changed while the image was being built")
        manifest_sha = manifest_digest((staged / MANIFEST_NAME).read_bytes())
        image = Path(work) / "image"
        uuid = image_uuid(app_id, version)
        progress("mkfs.erofs")
        run([mkfs, "--quiet", f"-T{timestamp}", f"-U{uuid}", "--all-root", "-x-1", image, staged],
            timeout=MKFS_TIMEOUT_S)
        data_size = _pad_to_block(image)
        progress(f"hash tree over {data_size // BLOCK_SIZE} blocks")
        salt = hashlib.sha256(f"weft-wapp-salt\n{app_id}\n{version}\n{manifest_sha}".encode()).digest()
        params = VerityParams(salt=salt, uuid=uuid)
        result = format_hash(image, image, params, hash_offset=data_size)
        footer = Footer(app_id=app_id, version=version, manifest_sha256=manifest_sha, data_size=data_size,
                        key_id=key_id(key.verify_key),
                        verity=VerityInfo(data_blocks=result.layout.data_blocks, hash_offset=data_size,
                                          hash_size=result.hash_area_size, salt=salt.hex(),
                                          root_hash=result.root_hash.hex(), uuid=str(uuid)))
        progress("signing footer")
        with open(image, "r+b") as fh:
            fh.seek(footer.footer_offset)
            fh.write(seal_footer(footer, key))
            fh.truncate()
        os.chmod(image, 0o644)
        _publish(image, out, force)
    progress(f"wrote {out}")
    return out


def _pad_to_block(image: Path) -> int:
    size = image.stat().st_size
    padded = -(-size // BLOCK_SIZE) * BLOCK_SIZE
    if padded != size:
        os.truncate(image, padded)
    return padded


def _publish(image: Path, out: Path, force: bool) -> None:
    if force:
        os.replace(image, out)
        return
    try:
        os.link(image, out)  # fails instead of replacing a file that appeared meanwhile
    except FileExistsError:
        raise ImageError(f"{out} already exists (use --force to replace it)") from None


def verify_image(path: str | os.PathLike[str], keys: Iterable[VerifyKey], *,
                 expected_app_id: str | None = None, workers: int | None = None) -> SignedFooter:
    """Full check: footer, signature by a trusted key, expected id, every data and hash block,
    and the manifest inside the file system against the footer.

    `workers=1` keeps hashing in this process (for callers that must not fork, e.g. ones
    running threads Python does not know about)."""
    signed = read_footer(path)
    verify_footer_signature(signed, keys)
    footer = signed.footer
    named = IMAGE_NAME_RE.match(Path(path).name)
    if expected_app_id is not None and footer.app_id != expected_app_id:
        raise ImageError(f"mismatched id: the image is for '{footer.app_id}', expected '{expected_app_id}'")
    if named and (named["id"], named["version"]) != (footer.app_id, footer.version):
        raise ImageError(f"mismatched id: the file is named for {named['id']} {named['version']} but holds "
                         f"{footer.app_id} {footer.version}")
    v = footer.verity
    try:
        verify_hash(path, path, bytes.fromhex(v.root_hash), v.params(), data_blocks=v.data_blocks,
                    hash_offset=v.hash_offset, workers=workers)
    except VerityMismatch as exc:
        what = {"data": "tampered data", "hash": "tampered hash tree", "superblock": "tampered hash tree",
                "root": "tampered hash tree", "size": "truncated image"}[exc.area]
        raise ImageError(f"{what}: {exc}") from None
    _check_inner_manifest(path, footer)
    return signed


def _check_inner_manifest(path: str | os.PathLike[str], footer: Footer) -> None:
    """The manifest inside the (now verified) EROFS data must be the one the footer names
    (the same check the store listing makes: weft.pack.image_manifest)."""
    try:
        inner_manifest(path, footer)
    except ImageManifestError as exc:
        raise ImageError(str(exc)) from None


def describe(signed: SignedFooter) -> dict[str, Any]:
    """The footer fields plus where things are, for `inspect-image`."""
    info = signed.footer.model_dump(mode="json")
    info["footer_offset"] = signed.footer.footer_offset
    info["file_size"] = signed.file_size
    info["signature"] = signed.signature.hex()
    return info
