"""`weft-pack`: check, sign, bundle, install and image WEFT app packages."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from weft import settings
from weft.cli_support import ArgumentParser, add_debug_flag, run_cli
from weft.errors import UsageError, WeftError
from weft.manifest import is_valid_app_id, load_manifest
from weft.store import PACKAGE_KINDS, StorePaths
from weft.terminal import terminal_safe

if TYPE_CHECKING:  # the commands import what they use when they run: start-up stays fast
    from nacl.signing import VerifyKey

    from weft.pack.image_store import StoredImage


def _out(text: str) -> None:
    """Print lines; each goes through terminal_safe, so nothing a package says can drive the terminal.

    Package-provided values are also escaped where they are formatted (`_shown`), so a newline
    inside one cannot forge an output line either. JSON output passes unchanged: json.dumps
    escapes every control character itself.
    """
    sys.stdout.write("\n".join(terminal_safe(line) for line in text.split("\n")) + "\n")


def _warn(text: str) -> None:
    sys.stderr.write(f"warning: {terminal_safe(text)}\n")


def _shown(value: object) -> str:
    """A package-provided value for a human-readable line: one line, controls escaped."""
    return terminal_safe(str(value))


def cmd_check(args: argparse.Namespace) -> int:
    from weft.pack.check import check_package

    check_package(args.dir)
    _out("OK")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from weft.pack.image_store import describe_image, find_image

    store = StorePaths.from_env()
    key_dir = args.trusted_keys or store.trusted_keys_dir  # the keys `list` trusts (WEFT_TRUSTED_KEYS)
    if args.dir.is_file():  # any .wapp file: described, and said to be unverified if it is
        return _print_image_info(describe_image(args.dir, None, key_dir), key_dir, args.json)
    if not args.dir.exists() and is_valid_app_id(str(args.dir)):  # an installed app's id
        image = find_image(str(args.dir), store, key_dir)  # refuses an image no trusted key signed
        if image is not None:
            return _print_image_info(image, key_dir, args.json)
        args.dir = store.find_package(str(args.dir))
    m = load_manifest(args.dir)
    p = m.package
    if args.json:
        _out(json.dumps({"id": p.id, "name": p.name, "version": p.version, "description": p.description,
                         "author": p.author, "module": m.runtime.module, "ui": m.ui.entry,
                         "capabilities": list(p.capabilities)}, indent=2))
        return 0
    rows = [("id", p.id), ("name", p.name), ("version", p.version), ("desc", p.description),
            ("author", p.author), ("module", m.runtime.module), ("ui", m.ui.entry)]
    rows += [("cap", cap) for cap in p.capabilities]
    for label, value in rows:
        if value is not None:
            _out(f"{label + ':':<8} {_shown(value)}")
    return 0


def _print_image_info(image: StoredImage, key_dir: Path, as_json: bool) -> int:
    if image.signature_problem is not None:
        _warn(f"{image.path}: UNVERIFIED: {image.signature_problem} (trusted keys: {key_dir}); nothing this "
              f"footer says is vouched for, the listing skips such an image and weft-mountd does not mount it")
    if as_json:
        _out(json.dumps(image.model_dump(mode="json"), indent=2))
        return 0
    signature = (f"verified (a trusted key in {key_dir})" if image.signature_problem is None
                 else f"UNVERIFIED: {image.signature_problem}")
    rows = [("signature", signature), ("id", image.id), ("version", image.version), ("store", image.store),
            ("path", terminal_safe(str(image.path))), ("publisher", image.publisher), ("key id", image.key_id),
            ("root hash", image.root_hash), ("file size", f"{image.file_size} bytes"),
            ("data size", f"{image.data_size} bytes"), ("hash size", f"{image.hash_size} bytes")]
    for label, value in rows:
        if value is not None:
            _out(f"{label + ':':<11} {_shown(value)}")
    _out("(from the footer; install, verify-image and weft-mountd check every block as well)")
    return 0


def cmd_generate_key(args: argparse.Namespace) -> int:
    from weft.pack.keys import generate_keypair

    private, public = generate_keypair(args.dir)
    _out(f"private key: {private}")
    _out(f"public key:  {public}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from weft.pack.keys import load_signing_key
    from weft.pack.signing import sign_package

    _out(f"signed: {sign_package(args.dir, load_signing_key(args.key))}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from weft.pack.keys import load_verify_key
    from weft.pack.signing import verify_package

    verify_package(args.dir, load_verify_key(args.key))
    _out("OK")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from weft.pack.bundle import is_bundle_path
    from weft.pack.install import install_package
    from weft.pack.keys import load_verify_key

    if args.image_key or (args.source.is_file() and not is_bundle_path(args.source)):
        return _install_image(args)
    if args.allow_downgrade or args.trusted_keys:
        raise UsageError("--allow-downgrade and --trusted-keys apply to .wapp images only")
    if args.require_signature and not args.key:
        raise UsageError("--require-signature needs --key PUB")
    if args.key and not args.require_signature:
        raise UsageError("--key is only used with --require-signature")
    key = load_verify_key(args.key) if args.require_signature else None
    app = install_package(args.source, StorePaths.from_env(), trusted_key=key)
    _out(f"installed {app.id} (publisher {app.publisher}) -> {_shown(app.path)}")
    return 0


def _install_image(args: argparse.Namespace) -> int:
    import tempfile

    from weft.pack.footer import load_trusted_keys
    from weft.pack.image import build_image
    from weft.pack.image_store import install_image
    from weft.pack.keys import load_signing_key

    if args.require_signature or args.key:
        raise UsageError("--require-signature/--key are for directory packages; an image is always "
                         "verified against the trusted keys (--trusted-keys DIR)")
    store = StorePaths.from_env()
    key_dir = args.trusted_keys or store.trusted_keys_dir  # the keys `list` trusts (WEFT_TRUSTED_KEYS)
    keys = load_trusted_keys(key_dir)
    if not keys:
        raise UsageError(f"no trusted publisher keys in {key_dir}; on a development host pass "
                         f"--trusted-keys DIR (a directory of *.pub files) or set {settings.TRUSTED_KEYS.env}")
    with tempfile.TemporaryDirectory(prefix="weft-pack-") as work:
        source = args.source
        if args.image_key:
            if not args.source.is_dir():
                raise UsageError("--image-key packs a package directory; give a directory")
            source = build_image(args.source, load_signing_key(args.image_key), Path(work) / "app.wapp",
                                 timestamp=_source_date_epoch())
        image = install_image(source, store, keys, allow_downgrade=args.allow_downgrade)
    _out(f"installed {image.id} {image.version} (publisher {image.publisher}) -> {terminal_safe(str(image.path))}")
    return 0


def cmd_uninstall(args: argparse.Namespace) -> int:
    from weft.pack.image_store import system_holds, uninstall_image
    from weft.pack.install import uninstall_package

    store = StorePaths.from_env()
    removed_image = uninstall_image(args.app_id, store) if store.images_root is not None else None
    package_dir = store.install_root / args.app_id if store.install_root is not None else None
    if removed_image is None or (package_dir is not None and package_dir.is_dir()):
        if removed_image is None and system_holds(args.app_id, store):
            raise WeftError(f"{args.app_id} ships with the OS and cannot be uninstalled")
        uninstall_package(args.app_id, store, purge=args.purge)
    elif args.purge:
        shutil.rmtree(store.all_app_data(args.app_id), ignore_errors=True)
    _out(f"uninstalled {args.app_id}" + (" (data purged)" if args.purge else ""))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """weft.store's one listing, the one appd's catalogue answers with (for the kind its app source
    launches): both kinds here, each entry with its kind and store."""
    store = StorePaths.from_env()
    listing = store.list_packages(kinds=(args.kind,) if args.kind else PACKAGE_KINDS)
    for skipped in listing.skipped:
        _warn(f"skipping {skipped.path}: {skipped.reason}")
    packages = listing.packages
    if args.json:
        _out(json.dumps([{"id": p.app_id, "name": p.manifest.package.name, "version": p.manifest.package.version,
                          "kind": p.kind, "store": p.store, "publisher": p.publisher, "path": str(p.path),
                          "root_hash": p.root_hash} for p in packages], indent=2))
    elif not packages:
        _out("no apps installed")
    else:
        for p in packages:
            _out(f"{p.app_id}  {_shown(p.manifest.package.name)}  {p.manifest.package.version}  {p.kind} ({p.store})")
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from weft.pack.bundle import bundle_package

    _out(f"bundled: {bundle_package(args.dir, args.out)}")
    return 0


def cmd_unbundle(args: argparse.Namespace) -> int:
    from weft.pack.bundle import unbundle

    _out(f"unbundled: {args.archive} -> {unbundle(args.archive, args.out)}")
    return 0


def _source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "0")
    if not value.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH must be a non-negative integer, got '{value}'")
    return int(value)


def cmd_build_image(args: argparse.Namespace) -> int:
    from weft.pack.image import build_image
    from weft.pack.keys import load_signing_key

    out = build_image(args.dir, load_signing_key(args.key), args.out, force=args.force,
                      timestamp=_source_date_epoch())
    _out(f"image: {out}")
    return 0


def _trusted_keys(args: argparse.Namespace) -> list[VerifyKey]:
    from weft.pack.footer import load_trusted_keys
    from weft.pack.keys import load_verify_key

    keys = [load_verify_key(k) for k in args.key or []]
    if args.trusted_keys:
        keys += load_trusted_keys(args.trusted_keys)
    if not keys:
        raise UsageError("give --key PUB or --trusted-keys DIR")
    return keys


def cmd_verify_image(args: argparse.Namespace) -> int:
    from weft.pack.image import verify_image

    signed = verify_image(args.image, _trusted_keys(args), expected_app_id=args.app_id)
    _out(f"OK {signed.footer.app_id} {signed.footer.version} root hash {signed.footer.verity.root_hash}")
    return 0


def cmd_inspect_image(args: argparse.Namespace) -> int:
    from weft.pack.footer import read_footer
    from weft.pack.image import describe

    info = describe(read_footer(args.image))
    if args.json:
        _out(json.dumps(info, indent=2))
        return 0
    verity = info.pop("verity")
    for label, value in list(info.items()) + [(f"verity.{k}", v) for k, v in verity.items()]:
        _out(f"{label + ':':<24} {value}")
    _out("(signature not checked; use verify-image)")
    return 0


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="weft-pack", description=__doc__)
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=ArgumentParser)

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str) -> ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        add_debug_flag(p)
        p.set_defaults(func=func)
        return p

    p = command("check", cmd_check, "validate a package directory (manifest, module, UI entry)")
    p.add_argument("dir", type=Path)
    p = command("info", cmd_info, "show a package's manifest, or an app image's footer (a .wapp file or "
                "an installed app id)")
    p.add_argument("dir", type=Path, metavar="TARGET")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--trusted-keys", "--keys", type=Path, metavar="DIR",
                   help=f"the keys an image's footer signature is checked against (default: "
                        f"${settings.TRUSTED_KEYS.env}, else {settings.TRUSTED_KEYS.default})")
    p = command("generate-key", cmd_generate_key, "create weft-sign.key (mode 0600) and weft-sign.pub")
    p.add_argument("dir", type=Path, nargs="?", default=Path("."))
    p = command("sign", cmd_sign, "write DIR/signature.sig (Ed25519 over the canonical bundle hash)")
    p.add_argument("dir", type=Path)
    p.add_argument("--key", required=True, type=Path, help="private key file (weft-sign.key)")
    p = command("verify", cmd_verify, "check DIR/signature.sig against a public key")
    p.add_argument("dir", type=Path)
    p.add_argument("--key", required=True, type=Path, help="public key file (weft-sign.pub)")
    p = command("install", cmd_install, "install a .wapp image (verified against the trusted keys first), "
                "or a package directory or .app.tar.zst bundle, atomically")
    p.add_argument("source", type=Path)
    p.add_argument("--require-signature", action="store_true", help="refuse unsigned or wrongly signed packages")
    p.add_argument("--key", type=Path, help="public key for --require-signature")
    p.add_argument("--image-key", type=Path, metavar="KEY",
                   help="pack the package directory into a .wapp signed with this private key, then install it")
    p.add_argument("--trusted-keys", "--keys", type=Path, metavar="DIR",
                   help=f"trusted publisher keys for images (default: ${settings.TRUSTED_KEYS.env}, "
                        f"else {settings.TRUSTED_KEYS.default})")
    p.add_argument("--allow-downgrade", action="store_true",
                   help="install an image older than the installed or activated version (lowers the "
                        "device's rollback record: root only)")
    p = command("uninstall", cmd_uninstall, "remove an installed package or image (its data stays unless --purge)")
    p.add_argument("app_id")
    p.add_argument("--purge", action="store_true", help="also delete the app's data directory")
    p = command("list", cmd_list, "list installed packages and app images")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--kind", choices=PACKAGE_KINDS,
                   help="only app images (what appd lists with WEFT_APP_SOURCE=verified) or only package "
                        "directories (WEFT_APP_SOURCE=directory)")
    p = command("bundle", cmd_bundle, "write <id>.app.tar.zst from a package directory")
    p.add_argument("dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("."), help="output directory (default: .)")
    p = command("unbundle", cmd_unbundle, "safely extract a .app.tar.zst bundle into OUT/<id>")
    p.add_argument("archive", type=Path)
    p.add_argument("--out", type=Path, default=Path("."), help="output directory (default: .)")
    p = command("build-image", cmd_build_image, "build a signed, reproducible <id>-<version>.wapp app image")
    p.add_argument("dir", type=Path)
    p.add_argument("--key", required=True, type=Path, help="publisher private key (weft-sign.key)")
    p.add_argument("--out", type=Path, help="image file (default: ./<id>-<version>.wapp)")
    p.add_argument("--force", action="store_true", help="replace an existing image file")
    p = command("verify-image", cmd_verify_image, "check an app image's signature, footer and every block")
    p.add_argument("image", type=Path)
    p.add_argument("--key", type=Path, action="append", help="trusted public key (repeatable)")
    p.add_argument("--trusted-keys", type=Path, help="directory of trusted *.pub keys")
    p.add_argument("--app-id", help="fail unless the image is for this app id")
    p = command("inspect-image", cmd_inspect_image, "print an app image's footer (no verification)")
    p.add_argument("image", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.func
    return command(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
