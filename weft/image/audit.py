"""`weft image audit`: every ELF in the image's root, judged for PIE, RELRO and NX, and every
setuid/setgid file checked against the allowlist (audit-allowlist.toml beside this module)."""
from __future__ import annotations

import fnmatch
import logging
import os
import stat
import tempfile
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from weft.image.elfcheck import ElfInfo, inspect_elf, is_elf
from weft.image.rootfs import extract_root

log = logging.getLogger("weft.image")

ALLOWLIST_FILE = Path(__file__).with_name("audit-allowlist.toml")


class SpecialMode(BaseModel):
    model_config = ConfigDict(frozen=True)
    path: str
    reason: str


class HardeningException(BaseModel):
    """ELF files (a glob) allowed to lack some hardening, with the reason."""

    model_config = ConfigDict(frozen=True)
    glob: str
    allow: tuple[str, ...]
    reason: str


class Allowlist(BaseModel):
    model_config = ConfigDict(frozen=True)
    setuid: tuple[SpecialMode, ...] = ()
    setgid: tuple[SpecialMode, ...] = ()
    exception: tuple[HardeningException, ...] = ()

    @classmethod
    def load(cls, path: Path = ALLOWLIST_FILE) -> Allowlist:
        return cls.model_validate(tomllib.loads(path.read_text()))

    def allowed_problems(self, path: str) -> set[str]:
        return {p for e in self.exception if fnmatch.fnmatchcase(path, e.glob) for p in e.allow}


class ElfEntry(BaseModel):
    model_config = ConfigDict(frozen=True)
    path: str
    info: ElfInfo | None
    problems: tuple[str, ...]


class AuditReport(BaseModel):
    model_config = ConfigDict(frozen=True)
    image: str
    passed: bool
    elf_count: int
    failures: tuple[str, ...]
    setuid: tuple[str, ...]
    setgid: tuple[str, ...]
    elves: tuple[ElfEntry, ...]


def audit_tree(root: Path, allowlist: Allowlist, image_name: str) -> AuditReport:
    elves: list[ElfEntry] = []
    failures: list[str] = []
    setuid: list[str] = []
    setgid: list[str] = []
    allowed_setuid = {entry.path for entry in allowlist.setuid}
    allowed_setgid = {entry.path for entry in allowlist.setgid}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = Path(dirpath) / name
            mode = full.lstat().st_mode
            if not stat.S_ISREG(mode):
                continue
            path = "/" + str(full.relative_to(root))
            if mode & stat.S_ISUID:
                setuid.append(path)
                if path not in allowed_setuid:
                    failures.append(f"{path}: unexpected setuid")
            if mode & stat.S_ISGID:
                setgid.append(path)
                if path not in allowed_setgid:
                    failures.append(f"{path}: unexpected setgid")
            if not is_elf(full):
                continue
            info = inspect_elf(full)
            if isinstance(info, str):
                elves.append(ElfEntry(path=path, info=None, problems=(info,)))
                failures.append(f"{path}: {info}")
                continue
            problems = tuple(p for p in info.problems() if p not in allowlist.allowed_problems(path))
            elves.append(ElfEntry(path=path, info=info, problems=problems))
            failures.extend(f"{path}: {p}" for p in problems)
    elves.sort(key=lambda e: e.path)
    return AuditReport(image=image_name, passed=not failures, elf_count=len(elves),
                       failures=tuple(sorted(failures)), setuid=tuple(sorted(setuid)),
                       setgid=tuple(sorted(setgid)), elves=tuple(elves))


def audit_image(image: Path, allowlist: Allowlist) -> AuditReport:
    with tempfile.TemporaryDirectory(prefix="weft-audit-", dir=image.parent) as tmp:
        root = extract_root(image, Path(tmp))
        log.info("audit: checking every file of the root")
        return audit_tree(root, allowlist, image.name)
