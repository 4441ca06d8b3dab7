"""Hardening properties of one ELF file, read with pyelftools."""
from __future__ import annotations

from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile
from pydantic import BaseModel, ConfigDict

ELF_MAGIC = b"\x7fELF"
DF_BIND_NOW = 0x8
DF_1_NOW = 0x1
DF_1_PIE = 0x08000000


class ElfInfo(BaseModel):
    """What the audit needs to know about one ELF file."""

    model_config = ConfigDict(frozen=True)
    kind: str  # "executable", "shared-object", "relocatable" (kernel modules, objects) or "other"
    pie: bool
    relro: str  # "full", "partial" or "none"
    nx: bool

    def problems(self) -> list[str]:
        """Missing hardening; only linked programs and libraries are judged."""
        if self.kind not in ("executable", "shared-object"):
            return []
        found = []
        if self.kind == "executable" and not self.pie:
            found.append("not PIE")
        if self.relro == "none":
            found.append("no RELRO")
        if not self.nx:
            found.append("executable stack (no NX)")
        return found


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == ELF_MAGIC
    except OSError:
        return False


def _dynamic_flags(elf: ELFFile) -> tuple[int, int]:
    section = elf.get_section_by_name(".dynamic")
    flags = flags_1 = 0
    if section is None or not hasattr(section, "iter_tags"):
        return flags, flags_1
    for tag in section.iter_tags():
        if tag.entry.d_tag == "DT_FLAGS":
            flags = tag.entry.d_val
        elif tag.entry.d_tag == "DT_FLAGS_1":
            flags_1 = tag.entry.d_val
        elif tag.entry.d_tag == "DT_BIND_NOW":
            flags |= DF_BIND_NOW
    return flags, flags_1


def inspect_elf(path: Path) -> ElfInfo | str:
    """The hardening facts of `path`, or a string saying why it could not be parsed."""
    try:
        with open(path, "rb") as fh:
            elf = ELFFile(fh)
            e_type = elf["e_type"]
            segments = {seg["p_type"]: seg for seg in elf.iter_segments()}
            flags, flags_1 = _dynamic_flags(elf)
    except (ELFError, OSError, ValueError) as exc:
        return f"unreadable ELF: {exc}"
    has_interp = "PT_INTERP" in segments
    if e_type == "ET_EXEC":
        kind = "executable"
    elif e_type == "ET_DYN":
        kind = "executable" if has_interp or flags_1 & DF_1_PIE else "shared-object"
    elif e_type == "ET_REL":
        kind = "relocatable"
    else:
        kind = "other"
    if "PT_GNU_RELRO" not in segments:
        relro = "none"
    elif flags & DF_BIND_NOW or flags_1 & DF_1_NOW:
        relro = "full"
    else:
        relro = "partial"
    stack = segments.get("PT_GNU_STACK")
    # Without PT_GNU_STACK the kernel gives x86-64 programs an executable stack.
    nx = stack is not None and not stack["p_flags"] & P_FLAGS.PF_X
    return ElfInfo(kind=kind, pie=e_type == "ET_DYN", relro=relro, nx=nx)
