"""What a package directory contains: its files, walked the way the signature scheme walks them.

Symlinks are followed (reference §2.5) but must resolve inside the package; device files,
fifos and sockets are refused, and so are symlink loops. File names must be UTF-8 without
control characters (`require_clean_name`), so the signed listing is unambiguous.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from weft.errors import WeftError
from weft.terminal import terminal_safe

# C0 controls (TAB and LF among them), DEL and C1 controls.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# What surrogateescape makes of bytes that are not UTF-8.
_UNDECODABLE = re.compile("[\ud800-\udfff]")


class PackageTreeError(WeftError):
    """The package directory holds something a package must not."""


@dataclass(frozen=True)
class PackageFile:
    rel: str  # '/'-separated path inside the package, as signed
    path: Path  # where to read it (symlinks resolved)
    executable: bool


def walk_package(package_dir: str | os.PathLike[str]) -> list[PackageFile]:
    """Every file of the package, sorted by the UTF-8 bytes of its relative path."""
    root = Path(package_dir)
    if not root.is_dir():
        raise PackageTreeError(f"{root} is not a directory")
    files: list[PackageFile] = []
    _walk(root.resolve(), root, "", files, frozenset())
    files.sort(key=lambda f: f.rel.encode("utf-8"))
    return files


def _walk(base: Path, directory: Path, prefix: str, out: list[PackageFile], ancestors: frozenset[Path]) -> None:
    real_dir = directory.resolve()
    if real_dir in ancestors:
        raise PackageTreeError(f"symlink loop at '{prefix.rstrip('/') or '.'}'")
    ancestors = ancestors | {real_dir}
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise PackageTreeError(f"cannot list '{prefix or '.'}': {exc.strerror}") from None
    for name in names:
        rel = require_clean_name(prefix + os.fsencode(name).decode("utf-8", "surrogateescape"))
        path = directory / name
        if path.is_symlink():
            target = path.resolve()
            if target != base and base not in target.parents:
                raise PackageTreeError(f"'{rel}' is a symlink that leads outside the package")
            path = target
        try:
            info = path.stat()
        except OSError as exc:
            raise PackageTreeError(f"cannot read '{rel}': {exc.strerror}") from None
        if stat.S_ISDIR(info.st_mode):
            _walk(base, path, rel + "/", out, ancestors)
        elif stat.S_ISREG(info.st_mode):
            out.append(PackageFile(rel=rel, path=path, executable=bool(info.st_mode & 0o111)))
        else:
            raise PackageTreeError(f"'{rel}' is not a regular file or directory")


def require_clean_name(rel: str) -> str:
    """`rel` (a path inside a package, undecodable bytes as surrogateescape) if it can be signed.

    The signed listing is `<rel>\\t<sha256>\\n` per file (reference §2.5): a name holding a tab
    and a newline can stand in for two files, so names with control characters (C0, DEL, C1)
    are refused. So are names that are not UTF-8: the reference signs them lossily, which
    makes two different names sign alike. Every legitimate name keeps the reference's digest.
    """
    if _UNDECODABLE.search(rel):
        raise PackageTreeError(f"'{terminal_safe(rel)}': file name is not valid UTF-8")
    if _CONTROL.search(rel):
        raise PackageTreeError(f"'{terminal_safe(rel)}': file name contains a control character")
    return rel


def copy_package(source: str | os.PathLike[str], dest: Path) -> Path:
    """Copy exactly the files the signature covers into a new `dest`, with normalised modes
    (0755 directories, 0644 or 0755 files): symlinks inside the package become plain files."""
    if not Path(source).is_dir():
        raise PackageTreeError(f"{os.fspath(source)} is neither a package directory nor a .app.tar.zst bundle")
    files = walk_package(source)
    dest.mkdir(mode=0o755)
    os.chmod(dest, 0o755)
    for f in files:
        target = dest / f.rel
        if not target.parent.exists():
            target.parent.mkdir(mode=0o755, parents=True)
        shutil.copyfile(f.path, target)
        os.chmod(target, 0o755 if f.executable else 0o644)
    for directory in dest.rglob("*"):
        if directory.is_dir():
            os.chmod(directory, 0o755)  # mkdir's mode is filtered by the umask
    return dest
