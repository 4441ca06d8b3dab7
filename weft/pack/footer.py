"""The signed footer at the end of a `.wapp` app image (byte layout: docs/app-image-format.md).

    [EROFS data][verity superblock + hash tree][footer JSON][Ed25519 signature, 64][trailer, 16]
    trailer = b"WEFTWAPP" + u32 LE format version + u32 LE footer JSON length

Everything a verifier needs is read from the tail of the file alone, so the mount helper can
check the signature before it reads (or maps) anything else. Imports: pydantic, PyNaCl and a
few weft modules (docs/app-image-format.md lists them).
"""
from __future__ import annotations

import hashlib
import os
import struct
import uuid as uuidlib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Final, Literal

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from weft.errors import WeftError
from weft.manifest import AppId, Version
from weft.pack.keys import KeyFileError, key_id, load_verify_key
from weft.verity.params import VerityParams, compute_layout

MAGIC = b"WEFTWAPP"
FORMAT_VERSION: Final = 1
TRAILER = struct.Struct("<8sII")
SIGNATURE_SIZE = 64
MAX_FOOTER_BYTES = 64 * 1024
BLOCK_SIZE = 4096
# Domain separation: a footer signature can never be mistaken for a package signature.
SIGNING_CONTEXT = b"weft-wapp-footer-v1\0"


class FooterError(WeftError):
    """The file has no readable, consistent footer (not a .wapp, truncated, or malformed)."""


class FooterSignatureError(WeftError):
    """The footer is not signed by a trusted key."""


def _hex_of(size: int) -> AfterValidator:
    def check(value: str) -> str:
        if len(value) != 2 * size or any(c not in "0123456789abcdef" for c in value):
            raise ValueError(f"must be {2 * size} lowercase hex characters")
        return value
    return AfterValidator(check)


Hex32 = Annotated[str, _hex_of(32)]


class VerityInfo(BaseModel):
    """The dm-verity parameters; the superblock at `hash_offset` repeats them."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    hash_type: Literal[1] = 1
    hash_algorithm: Literal["sha256"] = "sha256"
    data_block_size: Literal[4096] = 4096
    hash_block_size: Literal[4096] = 4096
    data_blocks: int = Field(ge=1, le=1 << 40)
    hash_offset: int = Field(ge=BLOCK_SIZE)
    hash_size: int = Field(ge=1)
    salt: Hex32
    root_hash: Hex32
    uuid: Annotated[str, Field(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]

    def params(self) -> VerityParams:
        return VerityParams(salt=bytes.fromhex(self.salt), hash_name=self.hash_algorithm,
                            data_block_size=self.data_block_size, hash_block_size=self.hash_block_size,
                            hash_type=self.hash_type, superblock=True, uuid=uuidlib.UUID(self.uuid))


class Footer(BaseModel):
    """What the publisher signs about an app image."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    format_version: Literal[1] = FORMAT_VERSION
    app_id: AppId
    version: Version
    manifest_sha256: Hex32
    data_offset: Literal[0] = 0
    data_size: int = Field(ge=BLOCK_SIZE)
    verity: VerityInfo
    key_id: Hex32

    @model_validator(mode="after")
    def _consistent(self) -> Footer:
        v = self.verity
        if self.data_size != v.data_blocks * v.data_block_size:
            raise ValueError("data_size is not data_blocks * data_block_size")
        if v.hash_offset != self.data_offset + self.data_size:
            raise ValueError("the hash area does not start right after the data")
        layout = compute_layout(v.params(), v.data_blocks, v.hash_offset)
        if v.hash_size != layout.end_offset - v.hash_offset:
            raise ValueError(f"hash_size {v.hash_size} does not match the hash tree "
                             f"({layout.end_offset - v.hash_offset} bytes)")
        return self

    @property
    def footer_offset(self) -> int:
        return self.verity.hash_offset + self.verity.hash_size

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


class SignedFooter(BaseModel):
    model_config = ConfigDict(frozen=True)
    footer: Footer
    body: bytes  # the exact signed JSON bytes
    signature: bytes
    file_size: int


def seal_footer(footer: Footer, key: SigningKey) -> bytes:
    """Bytes to append after the hash area: JSON, signature, trailer."""
    body = footer.encode()
    signature = key.sign(SIGNING_CONTEXT + body).signature
    return body + signature + TRAILER.pack(MAGIC, FORMAT_VERSION, len(body))


def read_footer(path: str | os.PathLike[str]) -> SignedFooter:
    """Parse the footer from the file's tail, without reading the data or the hash tree."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise FooterError(f"cannot read {os.fspath(path)}: {exc.strerror}") from None
    try:
        return read_footer_fd(fd, os.fspath(path))
    finally:
        os.close(fd)


def read_footer_fd(fd: int, name: str) -> SignedFooter:
    """`read_footer` on an open file (the mount helper checks the very file it then maps);
    `name` is for messages. Uses pread only, so the file offset is left alone."""
    try:
        size = os.fstat(fd).st_size
        if size < TRAILER.size:
            raise FooterError(f"{name} is truncated or not a .wapp image (no footer)")
        magic, version, body_len = TRAILER.unpack(os.pread(fd, TRAILER.size, size - TRAILER.size))
        if magic != MAGIC:
            raise FooterError(f"{name} is truncated or not a .wapp image (no footer magic)")
        if version != FORMAT_VERSION:
            raise FooterError(f"unsupported .wapp format version {version}")
        if not 0 < body_len <= MAX_FOOTER_BYTES or body_len + SIGNATURE_SIZE + TRAILER.size > size:
            raise FooterError(f"footer length {body_len} is impossible for a {size}-byte file")
        tail_start = size - TRAILER.size - SIGNATURE_SIZE - body_len
        tail = os.pread(fd, body_len + SIGNATURE_SIZE, tail_start)
        if len(tail) != body_len + SIGNATURE_SIZE:
            raise FooterError(f"{name} shrank while its footer was read")
        body, signature = tail[:body_len], tail[body_len:]
    except OSError as exc:
        raise FooterError(f"cannot read {name}: {exc.strerror}") from None
    footer = parse_footer(body)
    if footer.footer_offset != tail_start:
        raise FooterError(f"file size does not match the footer: footer found at byte {tail_start}, "
                          f"expected at {footer.footer_offset} (truncated or padded image)")
    return SignedFooter(footer=footer, body=body, signature=signature, file_size=size)


def parse_footer(body: bytes) -> Footer:
    try:
        return Footer.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "footer"
        raise FooterError(f"malformed footer: {where}: {first['msg']}") from None
    except WeftError as exc:  # e.g. verity parameters the tree arithmetic rejects
        raise FooterError(f"malformed footer: {exc}") from None


def load_trusted_keys(key_dir: str | os.PathLike[str]) -> list[VerifyKey]:
    """Every `*.pub` in a trusted-key directory; a malformed one is an error, not skipped."""
    try:
        paths = sorted(Path(key_dir).glob("*.pub"))
    except OSError as exc:
        raise KeyFileError(f"cannot read trusted keys in {os.fspath(key_dir)}: {exc.strerror}") from None
    return [load_verify_key(p) for p in paths]


def require_trusted_keys(key_dir: str | os.PathLike[str]) -> list[VerifyKey]:
    """load_trusted_keys, refusing a directory without any (nothing could verify an image); the
    KeyFileError says which of the two it is."""
    try:
        keys = load_trusted_keys(key_dir)
    except KeyFileError as exc:
        raise KeyFileError(f"the trusted keys are unusable: {exc}") from None
    if not keys:
        raise KeyFileError(f"no trusted publisher keys (*.pub) in {os.fspath(key_dir)}")
    return keys


def verify_footer_signature(signed: SignedFooter, keys: Iterable[VerifyKey]) -> VerifyKey:
    """Return the trusted key that signed the footer, or raise FooterSignatureError."""
    for key in keys:
        if key_id(key) != signed.footer.key_id:
            continue
        try:
            key.verify(SIGNING_CONTEXT + signed.body, signed.signature)
        except BadSignatureError:
            raise FooterSignatureError("bad signature: the footer was modified or the signature "
                                       "is not from the key it names") from None
        return key
    raise FooterSignatureError(f"wrong key: the image is signed by key {signed.footer.key_id[:16]}…, "
                               f"which is not among the trusted keys")


def manifest_digest(manifest_bytes: bytes) -> str:
    return hashlib.sha256(manifest_bytes).hexdigest()
