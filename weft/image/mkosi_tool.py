"""Finding mkosi ≥ 25: from PATH, else the Debian trixie package fetched into a cache dir.

The Debian package is pure Python (arch all), so it is fetched with apt using a private
configuration (its own sources list, lists and archive dirs — nothing on the host changes),
unpacked with dpkg-deb and run as `python3 -m mkosi`.
"""
from __future__ import annotations

import logging
import re
import shutil
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from weft.errors import WeftError
from weft.proc import NETWORK_VARIABLES, find_tool, inherited, run

MIN_VERSION = (25, 0)
log = logging.getLogger("weft.image")

SOURCES_LINE = ("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
                "http://deb.debian.org/debian trixie main\n")


class MkosiTool(BaseModel):
    """How to invoke mkosi: the argv prefix and the environment it needs."""

    model_config = ConfigDict(frozen=True)
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    version: str

    def environment(self) -> dict[str, str]:
        """What mkosi reads from its environment (on top of weft.proc's clean one): its own
        MKOSI_* settings, the proxy it hands to the package manager, its cache location, the
        terminal and the invoking user."""
        passed_on = inherited(*NETWORK_VARIABLES, "TERM", "USER", "XDG_CACHE_HOME", "SYSTEMD_LOG_LEVEL",
                              "SUDO_USER", "SUDO_UID", "SUDO_GID", prefix="MKOSI_")
        return {**passed_on, **dict(self.env)}


def _parse_version(text: str) -> tuple[int, ...] | None:
    match = re.search(r"mkosi (\d+)(?:\.(\d+))?", text)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def _probe(argv: tuple[str, ...], env: tuple[tuple[str, str], ...]) -> MkosiTool | None:
    tool = MkosiTool(argv=argv, env=env, version="?")
    try:
        out = run([*argv, "--version"], env=tool.environment(), timeout=60).stdout.decode()
    except WeftError:
        return None
    version = _parse_version(out)
    if version is None or version < MIN_VERSION:
        return None
    return tool.model_copy(update={"version": ".".join(map(str, version))})


def _apt_options(cache: Path) -> list[str]:
    return [
        f"-o=Dir::Etc::SourceList={cache / 'sources.list'}",
        "-o=Dir::Etc::SourceParts=/dev/null",
        f"-o=Dir::State::Lists={cache / 'lists'}",
        f"-o=Dir::Cache={cache / 'apt-cache'}",
        "-o=Dir::Etc::Preferences=/dev/null",
        "-o=Dir::Etc::PreferencesParts=/dev/null",
        "-o=APT::Sandbox::User=root",
    ]


def _fetch_debian_package(cache: Path) -> Path:
    """Download and unpack the trixie mkosi .deb into `cache`; return the unpacked root."""
    apt_get = find_tool("apt-get", "mkosi must be fetched with apt (Debian host required)")
    dpkg_deb = find_tool("dpkg-deb", "install dpkg")
    for sub in ("lists/partial", "apt-cache/archives/partial", "debs"):
        (cache / sub).mkdir(parents=True, exist_ok=True)
    (cache / "sources.list").write_text(SOURCES_LINE)
    log.info("image: fetching mkosi from Debian trixie")
    network = inherited(*NETWORK_VARIABLES)
    run([apt_get, *_apt_options(cache), "-q", "update"], env=network, timeout=600)
    for old in (cache / "debs").glob("*.deb"):
        old.unlink()
    run([apt_get, *_apt_options(cache), "-q", "download", "mkosi"], env=network, cwd=cache / "debs", timeout=600)
    debs = sorted((cache / "debs").glob("mkosi_*.deb"))
    if not debs:
        raise WeftError("apt-get download mkosi produced no package")
    root = cache / "root"
    shutil.rmtree(root, ignore_errors=True)
    run([dpkg_deb, "-x", debs[-1], root])
    return root


def _from_cache_root(root: Path) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    return (sys.executable, "-m", "mkosi"), (("PYTHONPATH", str(root / "usr/lib/python3/dist-packages")),)


def find_mkosi(cache_dir: Path) -> MkosiTool:
    """mkosi ≥ 25 from PATH, else from (and if needed, fetched into) `cache_dir`."""
    on_path = shutil.which("mkosi")
    if on_path and (tool := _probe((on_path,), ())):
        return tool
    root = cache_dir / "root"
    if root.is_dir() and (tool := _probe(*_from_cache_root(root))):
        return tool
    root = _fetch_debian_package(cache_dir)
    tool = _probe(*_from_cache_root(root))
    if tool is None:
        raise WeftError(f"the mkosi fetched into {cache_dir} does not run or is older than 25")
    return tool
