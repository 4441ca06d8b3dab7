"""`weft image build`: wheels and the signed shipped apps on the host, then mkosi (incremental)
builds the disk image."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from weft import settings
from weft.errors import WeftError
from weft.image import profiles
from weft.image.apps import prepare_apps, shipped_sources, signing_key_for
from weft.image.guests import repo_cache
from weft.image.mkosi_tool import find_mkosi
from weft.image.secureboot import secure_boot_key_for
from weft.image.update_keys import update_key_for
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
    image_version: str | None = None  # overrides mkosi.conf's ImageVersion=
    extra_trees: tuple[Path, ...] = ()  # mkosi --extra-tree: files laid over the image's own

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


def prepare_update_keyring(repo: Path, profile: str) -> Path:
    """build/trust/import-pubring.gpg: the keyring of the update key that the image trusts
    (mkosi.postinst.chroot installs it for systemd-pull)."""
    _secret, pubring = update_key_for(repo, profile)
    dest = repo / "build" / "trust" / "import-pubring.gpg"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pubring, dest)
    return dest


def remove_stale_partitions(out_dir: Path, image_id: str) -> None:
    """Drop the previous build's split partitions: their names carry the partition UUID, which
    changes with the content, so mkosi's -f (which removes the outputs it is about to write)
    would leave them beside the new ones, and `weft image publish` would not know which is which."""
    for stale in out_dir.glob(f"{image_id}.root-*.raw"):
        stale.unlink()


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
    prepare_update_keyring(config.repo, config.profile)
    secure_boot = secure_boot_key_for(config.repo, config.profile)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_partitions(config.out_dir, profiles.image_id(config.repo, config.profile))
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
        f"--secure-boot-key={secure_boot.key}",
        f"--secure-boot-certificate={secure_boot.certificate}",
    ]
    if config.image_version is not None:
        argv.append(f"--image-version={config.image_version}")
    argv += [f"--extra-tree={tree.resolve()}" for tree in config.extra_trees]
    if config.profile != profiles.DEFAULT:
        argv.append(f"--profile={config.profile}")
    log.info("image: building the %s image with mkosi (output in %s)", config.profile, config.out_dir)
    run([*argv, "build"], env=mkosi.environment(), cwd=config.repo, capture=False)
    if not config.image_path.is_file():
        raise WeftError(f"mkosi finished but {config.image_path} is missing")
    return config.image_path
