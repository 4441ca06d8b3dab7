"""`weft image publish`: lay out one build's update artefacts as a systemd-sysupdate source.

An image build (mkosi, `SplitArtifacts=uki,partitions`) leaves beside the disk image the
signed UKI `<id>.efi` and the root and root-verity partitions `<id>.root-x86-64[-verity].<UUID>.raw`.
`publish` copies them into DEST under the names the transfers in
mkosi.extra/usr/lib/sysupdate.d/ match:

    <id>_<version>.root-x86-64.<UUID>.raw
    <id>_<version>.root-x86-64-verity.<UUID>.raw
    <id>_<version>.efi
    SHA256SUMS        sha256sum lines of every artefact in DEST (all versions)
    SHA256SUMS.gpg    its detached signature by the update key (weft/image/update_keys.py)

A published version is never changed: publishing the same build again keeps its files,
publishing a different build under a version DEST already has is refused. Files appear
atomically (copied under a hidden temporary name, then linked into place), and SHA256SUMS with
its signature is replaced only after the new signature verifies, so a device reading DEST
mid-publish sees the old set or the new one.
"""
from __future__ import annotations

import hashlib
import logging
import mmap
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from weft.errors import WeftError
from weft.image.uki import UkiInfo, pe_sections, uki_info
from weft.image.update_keys import sign_file, verify_file

log = logging.getLogger("weft.image")

SUMS = "SHA256SUMS"
ROOT_TYPE = "root-x86-64"
VERITY_TYPE = "root-x86-64-verity"
# systemd-repart's %U writes the UUID as 32 hex digits; the dashed form is accepted as well.
_UUID = r"(?:[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
# A split partition as systemd-repart names it (SplitName=%t.%U): <image>.<type>.<UUID>.raw
SPLIT_FILE = re.compile(rf"(?P<stem>.+)\.(?P<type>{ROOT_TYPE}|{VERITY_TYPE})\.(?P<uuid>{_UUID})\.raw")
# Any version's published artefact in DEST (what SHA256SUMS covers).
ARTEFACT = re.compile(rf"[a-z0-9._-]+_[A-Za-z0-9.,_+-]+\.(?:(?:{ROOT_TYPE}|{VERITY_TYPE})\.{_UUID}\.raw|efi)")
_CHUNK = 1 << 20


class PublishResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    image_id: str
    version: str
    dest: Path
    files: tuple[str, ...]  # this version's artefacts in DEST
    copied: tuple[str, ...]  # those of them this run copied (the rest were already there, identical)
    bytes: int  # total size of this version's artefacts


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _is_uki(path: Path) -> bool:
    """A PE file with an .osrel section (another .efi, a boot loader, has none)."""
    with path.open("rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return False
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            try:
                return ".osrel" in pe_sections(data)
            except WeftError:
                return False  # not a PE file at all (or a broken one): not a candidate


def _one(found: list[Path], what: str, build_dir: Path) -> Path:
    if not found:
        raise WeftError(f"no {what} in {build_dir}; build the image first (`weft image build`; mkosi.conf needs "
                        f"SplitArtifacts=uki,partitions)")
    if len(found) > 1:
        raise WeftError(f"more than one {what} in {build_dir} ({', '.join(p.name for p in found)}); a build "
                        f"directory holds one build: rebuild into a clean one")
    return found[0]


def find_artefacts(build_dir: Path) -> tuple[Path, Path, Path]:
    """(UKI, root partition, verity partition) of the one build in `build_dir`."""
    if not build_dir.is_dir():
        raise WeftError(f"build directory {build_dir} does not exist; build the image first (`weft image build`)")
    files = sorted(p for p in build_dir.iterdir() if p.is_file())
    ukis = [p for p in files if p.suffix == ".efi" and _is_uki(p)]
    splits = [(p, m) for p in files if (m := SPLIT_FILE.fullmatch(p.name))]
    uki = _one(ukis, "UKI (*.efi with an .osrel section)", build_dir)
    root = _one([p for p, m in splits if m["type"] == ROOT_TYPE], f"root partition (*.{ROOT_TYPE}.<UUID>.raw)",
                build_dir)
    verity = _one([p for p, m in splits if m["type"] == VERITY_TYPE],
                  f"root verity partition (*.{VERITY_TYPE}.<UUID>.raw)", build_dir)
    return uki, root, verity


def _uuid_of(path: Path) -> str:
    match = SPLIT_FILE.fullmatch(path.name)
    assert match is not None  # find_artefacts chose it by this pattern
    return match["uuid"]


def check_same_build(info: UkiInfo, root: Path, verity: Path) -> None:
    """The partitions are the ones the UKI boots: systemd-repart derives their UUIDs from the
    root hash that the UKI's command line carries (first and last 128 bits)."""
    expected = {root: str(uuid.UUID(info.roothash[:32])), verity: str(uuid.UUID(info.roothash[32:]))}
    for path, want in expected.items():
        if uuid.UUID(_uuid_of(path)) != uuid.UUID(want):
            raise WeftError(f"{path.name} does not belong to the UKI's build: its UUID should be {want} (from "
                            f"roothash={info.roothash}); the build directory mixes artefacts from different "
                            f"builds, rebuild the image")


def published_names(info: UkiInfo, uki: Path, root: Path, verity: Path) -> dict[Path, str]:
    """Each build file and the name it is published under: the build's names with the version."""
    prefix = f"{info.image_id}_{info.image_version}"
    return {root: f"{prefix}.{ROOT_TYPE}.{_uuid_of(root)}.raw",
            verity: f"{prefix}.{VERITY_TYPE}.{_uuid_of(verity)}.raw",
            uki: f"{prefix}.efi"}


def _same_content(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while True:
            chunk = fa.read(_CHUNK)
            if chunk != fb.read(_CHUNK):
                return False
            if not chunk:
                return True


def _version_files(dest: Path, image_id: str, version: str) -> list[Path]:
    """The artefacts of exactly this version in DEST (`2` is not a prefix match for `2.1`)."""
    prefix = re.escape(f"{image_id}_{version}")
    pattern = re.compile(rf"{prefix}\.(?:(?:{ROOT_TYPE}|{VERITY_TYPE})\.{_UUID}\.raw|efi)")
    return sorted(p for p in dest.iterdir() if pattern.fullmatch(p.name))


def _conflict(info: UkiInfo, dest: Path, detail: str) -> WeftError:
    return WeftError(f"version {info.image_version} is already published with different content in {dest} "
                     f"({detail}); a published version never changes: build with a new --image-version")


def _check_not_conflicting(info: UkiInfo, sources: dict[Path, str], dest: Path) -> None:
    """Refuse before copying anything when DEST has this version from another build."""
    wanted = set(sources.values())
    for existing in _version_files(dest, info.image_id, info.image_version):
        if existing.name not in wanted:
            raise _conflict(info, dest, f"{existing.name} is not part of this build")
    for source, name in sources.items():
        target = dest / name
        if target.exists() and not _same_content(source, target):
            raise _conflict(info, dest, f"{name} differs")


def _copy_new(source: Path, dest: Path, name: str, info: UkiInfo) -> bool:
    """Copy `source` to DEST/name unless the identical file is there; True when copied."""
    target = dest / name
    if target.exists():
        log.info("publish: %s is already published (identical), kept", name)
        return False
    log.info("publish: copying %s (%s) to %s", source.name, _mib(source.stat().st_size), target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=dest)
    tmp = Path(tmp_name)
    try:
        with source.open("rb") as src, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        _place(tmp, target, source, info, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return True


def _place(tmp: Path, target: Path, source: Path, info: UkiInfo, dest: Path) -> None:
    """Make `tmp` visible as `target` at once, never replacing a file that appeared meanwhile
    (a concurrent publish): a hard link fails if the name exists, where a rename would replace."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        if not _same_content(source, target):
            raise _conflict(info, dest, f"{target.name} appeared meanwhile and differs") from None
    except OSError:
        # No hard links on this file system (a FAT medium): rename, after one more look.
        if target.exists():
            if not _same_content(source, target):
                raise _conflict(info, dest, f"{target.name} appeared meanwhile and differs") from None
        else:
            os.rename(tmp, target)


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _parse_sums(text: str) -> dict[str, str]:
    sums = {}
    for line in text.splitlines():
        digest, sep, name = line.partition("  ")
        if sep:
            sums[name] = digest
    return sums


def _previous_sums(dest: Path, pubring: Path) -> dict[str, str]:
    """The entries of DEST's current SHA256SUMS, after checking that this update key signed it:
    the new signature must not vouch for files that nobody can say this key published."""
    sums, signature = dest / SUMS, dest / f"{SUMS}.gpg"
    if not sums.exists():
        return {}
    try:
        verify_file(pubring, sums, signature)
    except WeftError as exc:
        raise WeftError(f"{sums} is not signed by the update key {pubring}, so its files cannot be signed "
                        f"again with it; publish into an empty directory (or remove {dest}'s SHA256SUMS if "
                        f"you trust every file there):\n  {exc}") from None
    return _parse_sums(sums.read_text())


def write_sums(dest: Path, secret_key: Path, pubring: Path, previous: dict[str, str]) -> bool:
    """Rewrite DEST/SHA256SUMS over every artefact in DEST and sign it; False when it already
    said exactly that (nothing is rewritten). A file that SHA256SUMS lists and that changed since
    it was published is refused."""
    sums = {}
    artefacts = (p for p in dest.iterdir() if ARTEFACT.fullmatch(p.name) and not p.name.startswith("."))
    for path in sorted(p for p in artefacts if p.is_file()):
        sums[path.name] = _sha256(path)
        if previous.get(path.name, sums[path.name]) != sums[path.name]:
            raise WeftError(f"{path} changed since it was published (sha256 {sums[path.name]}, SHA256SUMS says "
                            f"{previous[path.name]}); restore it or remove that version")
    text = "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))
    if previous and (dest / SUMS).read_text() == text:
        return False
    fd, tmp_name = tempfile.mkstemp(prefix=f".{SUMS}.", suffix=".tmp", dir=dest)
    tmp = Path(tmp_name)
    signature = tmp.with_name(tmp.name + ".gpg")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        sign_file(secret_key, tmp)
        verify_file(pubring, tmp, signature)  # what a device will check, before it can see it
        # Two renames: a device reading in between sees a signature that does not match and retries.
        os.replace(signature, dest / f"{SUMS}.gpg")
        os.replace(tmp, dest / SUMS)
    finally:
        tmp.unlink(missing_ok=True)
        signature.unlink(missing_ok=True)
    return True


def publish(build_dir: Path, dest: Path, secret_key: Path, pubring: Path) -> PublishResult:
    """Add the build in `build_dir` to the update source `dest` (see the module doc)."""
    uki, root, verity = find_artefacts(build_dir)
    info = uki_info(uki)
    check_same_build(info, root, verity)
    sources = published_names(info, uki, root, verity)
    log.info("publish: %s version %s from %s", info.image_id, info.image_version, build_dir)
    dest.mkdir(parents=True, exist_ok=True)
    previous = _previous_sums(dest, pubring)
    _check_not_conflicting(info, sources, dest)
    copied = [name for source, name in sources.items() if _copy_new(source, dest, name, info)]
    if write_sums(dest, secret_key, pubring, previous):
        log.info("publish: signed %s", dest / SUMS)
    files = tuple(sorted(sources.values()))
    return PublishResult(image_id=info.image_id, version=info.image_version, dest=dest, files=files,
                         copied=tuple(sorted(copied)), bytes=sum((dest / name).stat().st_size for name in files))
