"""Image profiles and their output files, read from mkosi's own configuration.

mkosi.conf and mkosi.profiles/ are the one place that names them: a profile is a directory
mkosi.profiles/<name>/ (plus `default`, the image built without a profile), and its image id
is the `ImageId=` of [Output] in the profile's mkosi.conf, else in the top-level mkosi.conf.
Nothing else in the tree spells `weft-test.raw`.
"""
from __future__ import annotations

from pathlib import Path

from weft.errors import WeftError

DEFAULT = "default"


def profiles(repo: Path) -> tuple[str, ...]:
    """`default` and every directory under mkosi.profiles/."""
    found = (repo / "mkosi.profiles").iterdir() if (repo / "mkosi.profiles").is_dir() else ()
    return (DEFAULT, *sorted(p.name for p in found if p.is_dir()))


def _output_image_id(conf: Path) -> str | None:
    """The last `ImageId=` in the [Output] sections of one mkosi.conf (mkosi: last one wins)."""
    section, found = "", None
    for line in conf.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Output" and line.startswith("ImageId="):
            found = line.split("=", 1)[1].strip()
    return found


def image_id(repo: Path, profile: str) -> str:
    if profile not in profiles(repo):
        raise WeftError(f"no image profile '{profile}' (have: {', '.join(profiles(repo))})")
    confs = [repo / "mkosi.conf"]
    if profile != DEFAULT:
        confs.insert(0, repo / "mkosi.profiles" / profile / "mkosi.conf")
    for conf in confs:
        if conf.is_file() and (found := _output_image_id(conf)):
            return found
    raise WeftError(f"no ImageId= in [Output] of {' or '.join(map(str, confs))}")


def output_dir(repo: Path, profile: str) -> Path:
    return repo / "mkosi.output" / profile


def image_path(repo: Path, profile: str, out_dir: Path | None = None) -> Path:
    """The disk image mkosi writes for `profile` (into `out_dir`, default mkosi.output/<profile>)."""
    return (out_dir or output_dir(repo, profile)) / f"{image_id(repo, profile)}.raw"
