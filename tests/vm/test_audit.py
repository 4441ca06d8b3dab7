"""`weft image audit`: the built image passes, and the checker does catch what it must."""
from __future__ import annotations

import json
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

from elftools.elf.elffile import ELFFile

from weft.image.audit import Allowlist, audit_tree

PF_X = 1
ET_EXEC = 2


def test_built_image_passes_the_audit(test_image: Path, artifacts: Path) -> None:
    report_file = artifacts / "audit-report.json"
    proc = subprocess.run([sys.executable, "-m", "weft.cli", "image", "audit", str(test_image),
                           "--report", str(report_file)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(report_file.read_text())
    assert report["passed"] is True and report["failures"] == []
    assert report["elf_count"] > 500  # the whole root was read, not an empty tree
    paths = {e["path"] for e in report["elves"]}
    assert {"/usr/lib/systemd/systemd", "/usr/bin/python3.11", "/usr/sbin/veritysetup"} <= paths
    assert report["setuid"] == ["/usr/lib/dbus-1.0/dbus-daemon-launch-helper"]
    assert "/usr/bin/su" not in report["setuid"]


def _patch_stack_executable(path: Path) -> None:
    with open(path, "r+b") as fh:
        elf = ELFFile(fh)
        phoff, phentsize = elf["e_phoff"], elf["e_phentsize"]
        index = next(i for i, seg in enumerate(elf.iter_segments()) if seg["p_type"] == "PT_GNU_STACK")
        flags = elf.get_segment(index)["p_flags"]
        fh.seek(phoff + index * phentsize + 4)  # Elf64_Phdr.p_flags
        fh.write(struct.pack("<I", flags | PF_X))


def test_audit_flags_setuid_and_missing_hardening(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    host_binary = Path(shutil.which("true") or "/usr/bin/true")
    for name in ("good", "setuid", "execstack", "notpie"):
        shutil.copy(host_binary, root / "usr/bin" / name)
    (root / "usr/bin/setuid").chmod(0o4755)
    _patch_stack_executable(root / "usr/bin/execstack")
    with open(root / "usr/bin/notpie", "r+b") as fh:
        fh.seek(16)  # e_type
        fh.write(struct.pack("<H", ET_EXEC))
    (root / "usr/bin/script").write_text("#!/bin/sh\n")
    (root / "usr/bin/script").chmod(stat.S_IRWXU | stat.S_ISGID)

    report = audit_tree(root, Allowlist(), "synthetic")

    assert not report.passed
    assert sorted(report.failures) == [
        "/usr/bin/execstack: executable stack (no NX)",
        "/usr/bin/notpie: not PIE",
        "/usr/bin/script: unexpected setgid",
        "/usr/bin/setuid: unexpected setuid",
    ]
    assert report.elf_count == 4
