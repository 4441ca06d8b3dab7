"""`weft image build`: wheels and the signed shipped apps on the host, then mkosi (incremental)
builds the disk image."""
from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from weft import settings
from weft.errors import WeftError
from weft.image import profiles
from weft.image.apps import prepare_apps, shipped_sources, signing_key_for
from weft.image.guests import repo_cache
from weft.image.mkosi_tool import find_mkosi
from weft.image.wheels import build_wheels
from weft.proc import run

log = logging.getLogger("weft.image")

class BuildConfig(BaseModel):
    """Everything one image build needs, resolved once at the CLI."""

    model_config = ConfigDict(frozen=True)
    repo: Path
    profile: str = profiles.DEFAULT  # one of profiles.profiles(repo)
    out_dir: Path
    mkosi_cache: Path
    force_all: bool = False

    @property
    def image_path(self) -> Path:
        return profiles.image_path(self.repo, self.profile, self.out_dir)


def default_mkosi_cache() -> Path:
    return settings.cache_dir() / "mkosi"


def source_date_epoch(repo: Path) -> str:
    """The last commit's time: a fixed timestamp for every file in the image (the epoch
    itself for a source tree that is not a git checkout)."""
    try:
        return run(["git", "-C", repo, "log", "-1", "--format=%ct"]).stdout.decode().strip()
    except WeftError:
        return "0"


def build_image(config: BuildConfig) -> Path:
    if not (config.repo / "mkosi.conf").is_file():
        raise WeftError(f"{config.repo} has no mkosi.conf; run from the weft repository")
    mkosi = find_mkosi(config.mkosi_cache)
    log.info("image: using mkosi %s", mkosi.version)
    build_wheels(config.repo, config.repo / "build" / "wheels")
    # The shipped apps, signed now; mkosi.postinst.chroot puts them into /usr/share/weft/images.
    prepare_apps(shipped_sources(config.repo), signing_key_for(config.repo, config.profile),
                 config.repo / "build" / "apps", cache=repo_cache(config.repo),
                 timestamp=int(source_date_epoch(config.repo)))
    config.out_dir.mkdir(parents=True, exist_ok=True)
    cache = config.repo / "mkosi.cache"
    cache.mkdir(exist_ok=True)
    argv = [
        *mkosi.argv,
        f"--directory={config.repo}",
        f"--output-directory={config.out_dir}",
        f"--cache-directory={cache}",
        f"--source-date-epoch={source_date_epoch(config.repo)}",
        # -f rebuilds the image; -ff also drops the incremental cache and the tools tree.
        "-ff" if config.force_all else "-f",
    ]
    if config.profile != profiles.DEFAULT:
        argv.append(f"--profile={config.profile}")
    log.info("image: building the %s image with mkosi (output in %s)", config.profile, config.out_dir)
    run([*argv, "build"], env=mkosi.environment(), cwd=config.repo, capture=False)
    if not config.image_path.is_file():
        raise WeftError(f"mkosi finished but {config.image_path} is missing")
    return config.image_path
