"""Wheels of the weft package and all its dependencies, built on the host.

The image build installs from these wheels with `--no-index`, so nothing inside the image
build touches the network. SHA256SUMS marks a complete set (mkosi.postinst.chroot checks it).
"""
from __future__ import annotations

import hashlib
import logging
import shutil
import sys
from pathlib import Path

from weft.proc import NETWORK_VARIABLES, inherited, run

log = logging.getLogger("weft.image")

# The packages pip must compile against Debian's libraries (shared with ci/setup.sh).
SOURCE_BUILT = Path("ci/pip-source-built.txt")


def build_wheels(repo: Path, dest: Path) -> list[Path]:
    """Build wheels for `repo` and its dependencies into `dest` (emptied first)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    log.info("image: building wheels for weft and its dependencies")
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--requirement", repo / SOURCE_BUILT, "--wheel-dir", dest, repo],
        env=inherited(*NETWORK_VARIABLES, prefix="PIP_"), timeout=1200)
    wheels = sorted(dest.glob("*.whl"))
    lines = [f"{hashlib.sha256(w.read_bytes()).hexdigest()}  {w.name}\n" for w in wheels]
    (dest / "SHA256SUMS").write_text("".join(lines))
    return wheels
