"""`.app.tar.zst` bundles: a tar of `<id>/…` compressed with zstd, extracted defensively.

Bundles we write are reproducible: entries sorted, symlinks inside the package stored as the
files they point to, owner root, mtime 0, modes 0644/0755. Extraction accepts only
directories, regular files and relative symlinks without `..`; it refuses absolute paths,
`..`, members below a symlink, links leaving the package, devices and fifos, so a hostile
archive cannot write outside its target; and the tar stream is bounded (members, data,
header sizes) before tarfile reads it (weft.pack.tar_guard), so it cannot exhaust memory.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import zstandard

from weft.errors import WeftError
from weft.manifest import is_valid_app_id
from weft.pack.check import check_package
from weft.pack.tar_guard import GuardedTarStream, UnsafeTarError
from weft.pack.tree import MAX_ENTRIES, MAX_TOTAL_BYTES, PackageFile, PackageTreeError, require_clean_name, walk_package

BUNDLE_SUFFIX = ".app.tar.zst"
MAX_ZSTD_WINDOW = 1 << 27  # what the decompressor may allocate: zstd's own default limit, made explicit
ZSTD_LEVEL = 3


class BundleError(WeftError):
    """The archive is malformed or tries to escape its target."""


def is_bundle_path(path: str | os.PathLike[str]) -> bool:
    name = Path(path).name
    return name.endswith((BUNDLE_SUFFIX, ".tar.zst")) and Path(path).is_file()


def bundle_package(package_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    manifest = check_package(package_dir)
    out = Path(out_dir) / f"{manifest.app_id}{BUNDLE_SUFFIX}"
    if out.exists():
        raise BundleError(f"{out} already exists")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bundle-", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as raw, zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(raw) as zst, \
                tarfile.open(fileobj=zst, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _add_tree(tar, manifest.app_id, walk_package(package_dir))
        os.chmod(tmp, 0o644)
        os.rename(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise
    return out


def _add_tree(tar: tarfile.TarFile, top: str, files: Iterable[PackageFile]) -> None:
    """Files in the walk's (sorted) order, each directory just before the first file inside it.
    File data comes from the descriptor the walk checked, never from the path again."""
    added = {top}
    tar.addfile(_member(top, tarfile.DIRTYPE, 0o755, 0))
    for f in files:
        for parent in reversed(PurePosixPath(f.rel).parents[:-1]):
            name = f"{top}/{parent}"
            if name not in added:
                added.add(name)
                tar.addfile(_member(name, tarfile.DIRTYPE, 0o755, 0))
        tar.addfile(_member(f"{top}/{f.rel}", tarfile.REGTYPE, 0o755 if f.executable else 0o644, f.size),
                    f.reader())


def _member(name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def unbundle(archive: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Extract a bundle into `out_dir/<id>`; returns that directory. Atomic: all or nothing."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unbundle-", dir=out))
    try:
        top = _extract(archive, staging)
        target = out / top
        if target.exists():
            raise BundleError(f"{target} already exists")
        os.rename(staging / top, target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract(archive: str | os.PathLike[str], dest: Path) -> str:
    top: str | None = None
    links: set[PurePosixPath] = set()
    try:
        with open(archive, "rb") as raw, \
                zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW).stream_reader(raw) as zst, \
                tarfile.open(fileobj=GuardedTarStream(zst, max_members=MAX_ENTRIES, max_file_bytes=MAX_TOTAL_BYTES),
                             mode="r|") as tar:
            for member in tar:
                name = _safe_name(member.name, links)
                if top is None:
                    top = name.parts[0]
                    if not is_valid_app_id(top):
                        raise BundleError(f"archive top directory '{top}' is not a valid app ID")
                if name.parts[0] != top:
                    raise BundleError("archive holds more than one top-level directory")
                _extract_member(tar, member, name, dest, links)
    except (tarfile.TarError, zstandard.ZstdError, EOFError, UnsafeTarError) as exc:
        raise BundleError(f"{os.fspath(archive)} is not a valid bundle: {exc}") from None
    except OSError as exc:
        raise BundleError(f"cannot read {os.fspath(archive)}: {exc.strerror or exc}") from None
    if top is None:
        raise BundleError(f"{os.fspath(archive)} is empty")
    return top


def _safe_name(raw: str, links: set[PurePosixPath]) -> PurePosixPath:
    try:
        require_clean_name(raw)
    except PackageTreeError as exc:
        raise BundleError(f"archive member {exc}") from None
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if raw.startswith("/") or not parts or ".." in parts:
        raise BundleError(f"unsafe path in archive: '{raw}'")
    name = PurePosixPath(*parts)
    if any(parent in links for parent in name.parents):
        raise BundleError(f"'{raw}' lies below a symlink in the archive")
    return name


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, name: PurePosixPath, dest: Path,
                    links: set[PurePosixPath]) -> None:
    path = dest / name
    if member.isdir():
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    elif member.isreg():
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        mode = 0o755 if member.mode & 0o111 else 0o644
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        except FileExistsError:
            raise BundleError(f"'{member.name}' appears twice in the archive") from None
        src = tar.extractfile(member)
        assert src is not None  # a regular member always has data
        with os.fdopen(fd, "wb") as out, src:
            shutil.copyfileobj(src, out, 1 << 20)
    elif member.issym():
        target = member.linkname
        try:
            require_clean_name(target)
        except PackageTreeError as exc:
            raise BundleError(f"symlink '{member.name}' -> {exc}") from None
        if target.startswith("/") or ".." in target.split("/") or not target:
            raise BundleError(f"symlink '{member.name}' -> '{target}' leaves the package")
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            os.symlink(target, path)
        except FileExistsError:
            raise BundleError(f"'{member.name}' appears twice in the archive") from None
        links.add(name)
    else:
        raise BundleError(f"'{member.name}' is a {_kind(member)}; bundles hold only files, directories and symlinks")


def _kind(member: tarfile.TarInfo) -> str:
    if member.islnk():
        return "hard link"
    if member.isfifo():
        return "fifo"
    if member.isdev():
        return "device file"
    return "special file"
