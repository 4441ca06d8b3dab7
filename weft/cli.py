"""`weft`: build, boot, audit and flash the WEFT OS image."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from weft.cli_support import ArgumentParser, add_debug_flag, run_cli
from weft.errors import WeftError
from weft.image import profiles

log = logging.getLogger("weft.image")


def _repo_root() -> Path:
    """The checkout this package runs from (the image is built from the source tree)."""
    return Path(__file__).resolve().parent.parent


def _cmd_image_build(args: argparse.Namespace) -> int:
    from weft.image.build import BuildConfig, build_image, default_mkosi_cache

    repo = _repo_root()
    config = BuildConfig(repo=repo, profile=args.profile,
                         out_dir=(args.out or profiles.output_dir(repo, args.profile)).resolve(),
                         mkosi_cache=default_mkosi_cache(), force_all=args.clean,
                         image_version=args.image_version, extra_trees=tuple(args.extra_tree))
    image = build_image(config)
    print(image)
    return 0


def _cmd_image_audit(args: argparse.Namespace) -> int:
    from weft.image.audit import Allowlist, audit_image

    report = audit_image(_existing_file(args.image), Allowlist.load())
    text = report.model_dump_json(indent=2)
    if args.report:
        args.report.write_text(text + "\n")
    else:
        print(text)
    summary = f"audit: {report.elf_count} ELF files, {len(report.setuid)} setuid, {len(report.setgid)} setgid"
    if not report.passed:
        raise WeftError(f"{summary}; {len(report.failures)} problem(s):\n  " + "\n  ".join(report.failures))
    log.info("%s; passed", summary)
    return 0


def _cmd_image_genkey(args: argparse.Namespace) -> int:
    from weft.image.apps import generate_release_key, release_key_path
    from weft.image.secureboot import RELEASE_KEY_STEM as RELEASE_SECURE_BOOT_STEM
    from weft.image.secureboot import generate_secure_boot_key
    from weft.image.update_keys import generate_release_update_key, release_key_paths

    repo = _repo_root()
    made = False
    # Each key that is missing is made; one that exists is never touched.
    if not release_key_path(repo).exists():
        private, public = generate_release_key(repo)
        print(f"release signing key: {private}\npublic key (what the image trusts): {public}")
        made = True
    if not release_key_paths(repo)[0].exists():
        secret, pubring = generate_release_update_key(repo)
        print(f"update signing key: {secret}\nupdate keyring (what the image trusts for updates): {pubring}")
        made = True
    secure_boot_stem = repo / RELEASE_SECURE_BOOT_STEM
    if not secure_boot_stem.with_suffix(".key").exists():
        pair = generate_secure_boot_key(secure_boot_stem, "WEFT OS Secure Boot")
        print(f"Secure Boot signing key: {pair.key}\ncertificate (what machines enroll): {pair.certificate}")
        made = True
    if not made:
        raise WeftError(f"{release_key_path(repo)}, {release_key_paths(repo)[0]} and "
                        f"{secure_boot_stem.with_suffix('.key')} already exist; refusing to overwrite a key")
    return 0


def _cmd_image_publish(args: argparse.Namespace) -> int:
    from weft.image.publish import publish
    from weft.image.update_keys import update_key_for

    repo = _repo_root()
    build_dir = args.build_dir or profiles.output_dir(repo, args.profile)
    if not build_dir.is_dir():  # before update_key_for, which may make a release key
        hint = "" if args.build_dir else (f"; build the image with `weft image build --profile {args.profile}` "
                                          f"or pass --build-dir DIR")
        raise WeftError(f"build directory {build_dir} does not exist{hint}")
    secret, pubring = update_key_for(repo, args.profile)
    result = publish(build_dir, args.dest, secret, pubring)
    log.info("publish: %s version %s: %d files, %.1f MiB (%d copied now) in %s", result.image_id, result.version,
             len(result.files), result.bytes / (1 << 20), len(result.copied), result.dest)
    for name in result.files:
        print(result.dest / name)
    return 0


def _cmd_image_flash(args: argparse.Namespace) -> int:
    from weft.image.flash import flash_image

    flash_image(_existing_file(args.image), args.device, assume_yes=args.yes)
    return 0


def _cmd_vm_run(args: argparse.Namespace) -> int:
    from weft.vm.run import run_vm

    repo = _repo_root()
    image = args.image or _newest_image(*(profiles.image_path(repo, p) for p in profiles.profiles(repo)))
    return run_vm(_existing_file(image), display=args.display, snapshot=args.snapshot,
                  secure_boot=args.secure_boot)


def _existing_file(path: Path) -> Path:
    from weft.errors import UsageError

    if not path.is_file():
        raise UsageError(f"{path} does not exist or is not a file")
    return path


def _existing_dir(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is not a directory")
    return path


def _newest_image(*candidates: Path) -> Path:
    """The most recently built of the profiles' disk images (not the split update partitions,
    which are .raw files in the same directories)."""
    from weft.errors import UsageError

    images = [p for p in candidates if p.is_file()]
    if not images:
        raise UsageError("no image built yet; run `weft image build` or pass --image FILE")
    return max(images, key=lambda p: p.stat().st_mtime)


def _command(group: Any, name: str, text: str) -> ArgumentParser:
    """A subcommand whose one-line help (in `weft image --help`) is also what its own --help says."""
    parser: ArgumentParser = group.add_parser(name, help=text, description=text)
    return parser


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="weft", description=__doc__)
    add_debug_flag(parser)
    top = parser.add_subparsers(dest="group", required=True, metavar="{image,vm}")

    image = top.add_parser("image", help="build, audit or flash the OS image")
    image_cmds = image.add_subparsers(dest="command", required=True, metavar="{build,genkey,publish,audit,flash}")
    build = _command(image_cmds, "build", "build the disk image with mkosi (incremental)")
    build.add_argument("--profile", default="default", choices=profiles.profiles(_repo_root()),
                       help="`test` adds a root shell on the virtio console for VM tests")
    build.add_argument("--out", type=Path, help="output directory (default: mkosi.output/PROFILE)")
    build.add_argument("--clean", action="store_true",
                       help="drop mkosi's incremental cache and tools tree first")
    build.add_argument("--image-version", metavar="VERSION",
                       help="the version this build installs and publishes (default: ImageVersion= of mkosi.conf)")
    build.add_argument("--extra-tree", type=_existing_dir, action="append", default=[], metavar="DIR",
                       help="lay the files of DIR over the image (mkosi --extra-tree); may be repeated")
    build.set_defaults(func=_cmd_image_build)
    genkey = _command(image_cmds, "genkey",
                      "make the missing release keys in keys/ (git-ignored): weft-release.key (+ .pub) signs "
                      "the apps the image ships, weft-update.sec.asc (+ .pubring.gpg) its updates, "
                      "secureboot.key (+ .crt) its boot chain; never overwrites one (build makes them if "
                      "missing; docs/trust.md)")
    genkey.set_defaults(func=_cmd_image_genkey)
    publish = _command(image_cmds, "publish", "add the built image's update artefacts (UKI, root, verity) to "
                                    "a systemd-sysupdate source directory and sign its SHA256SUMS")
    publish.add_argument("--profile", default="default", choices=profiles.profiles(_repo_root()),
                         help="whose build and update key: `test` signs with the committed test key, the others "
                         "with keys/weft-update.sec.asc (made if missing)")
    publish.add_argument("--build-dir", type=Path, metavar="DIR",
                         help="the build's output directory (default: mkosi.output/PROFILE)")
    publish.add_argument("dest", type=Path, metavar="DEST",
                         help="the update source directory (made if missing); versions already there are kept")
    publish.set_defaults(func=_cmd_image_publish)
    audit = _command(image_cmds, "audit", "check every ELF and setuid file in the image root")
    audit.add_argument("image", type=Path, help="disk image (.raw)")
    audit.add_argument("--report", type=Path, help="write the JSON report here instead of stdout")
    audit.set_defaults(func=_cmd_image_audit)
    flash = _command(image_cmds, "flash", "write the image to a block device and verify it")
    flash.add_argument("image", type=Path, help="disk image (.raw)")
    flash.add_argument("device", type=Path, help="target block device, e.g. /dev/sdb")
    flash.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    flash.set_defaults(func=_cmd_image_flash)

    vm = top.add_parser("vm", help="boot the image in QEMU")
    vm_cmds = vm.add_subparsers(dest="command", required=True, metavar="{run}")
    run = _command(vm_cmds, "run", "boot the image (KVM if it works here, else TCG)")
    run.add_argument("--image", type=Path, help="disk image (default: the newest built one)")
    run.add_argument("--display", default="none", choices=("none", "gtk", "vnc"),
                     help="none: serial console on this terminal (default)")
    run.add_argument("--snapshot", action="store_true",
                     help="discard all guest writes (the state partition too) at exit")
    run.add_argument("--secure-boot", action="store_true",
                     help="boot with UEFI Secure Boot firmware (keys are enrolled from the image on first boot)")
    run.set_defaults(func=_cmd_vm_run)
    return parser


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.func
    return command(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
