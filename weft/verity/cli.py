"""`weft-verity`: format and verify dm-verity hash areas, with veritysetup's options and output."""
from __future__ import annotations

import argparse
import os
import sys
import uuid as uuidlib
from collections.abc import Sequence

from weft.cli_support import ArgumentParser, add_debug_flag, run_cli
from weft.errors import UsageError
from weft.verity.format import FormatResult, data_blocks_of, format_hash, same_file
from weft.verity.params import HASH_ALGORITHMS, VerityParams
from weft.verity.verify import read_superblock, verify_hash

DEFAULT_SALT_BYTES = 32


def _hex(value: str, what: str) -> bytes:
    if value == "-":  # veritysetup's spelling of "no salt"
        return b""
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise UsageError(f"{what} must be hexadecimal, got '{value}'") from None


def _uuid(value: str) -> uuidlib.UUID:
    try:
        return uuidlib.UUID(value)
    except ValueError:
        raise UsageError(f"'{value}' is not a UUID") from None


def _add_params(parser: ArgumentParser) -> None:
    parser.add_argument("--hash", dest="hash_name", default="sha256", choices=HASH_ALGORITHMS)
    parser.add_argument("--data-block-size", type=int, default=4096)
    parser.add_argument("--hash-block-size", type=int, default=4096)
    parser.add_argument("--format", dest="hash_type", type=int, default=1, choices=(0, 1),
                        help="hash format: 1 = salt first, digests padded (default); 0 = Chrome OS")
    parser.add_argument("--salt", help="salt as hex, '-' for none (default: 32 random bytes)")
    parser.add_argument("--uuid", type=_uuid, help="superblock UUID (default: random)")
    parser.add_argument("--no-superblock", action="store_true", help="do not write/read a superblock")
    parser.add_argument("--hash-offset", type=int, default=0, help="byte offset of the hash area")
    parser.add_argument("--data-blocks", type=int,
                        help="data blocks to protect (default: all, or those before --hash-offset "
                             "when DATA and HASH are the same file)")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="weft-verity", description=__doc__)
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    fmt = sub.add_parser("format", help="compute and write a hash area",
                         description="Write the superblock and hash tree of DATA into HASH.")
    fmt.add_argument("data")
    fmt.add_argument("hash")
    _add_params(fmt)
    ver = sub.add_parser("verify", help="check DATA and HASH against a root hash",
                         description="Exit 0 only when every data and hash block matches ROOTHASH. "
                                     "With a superblock, the parameters are read from it.")
    ver.add_argument("data")
    ver.add_argument("hash")
    ver.add_argument("root_hash")
    _add_params(ver)
    return parser


def _params_from_args(args: argparse.Namespace, salt: bytes) -> VerityParams:
    return VerityParams(salt=salt, hash_name=args.hash_name, data_block_size=args.data_block_size,
                        hash_block_size=args.hash_block_size, hash_type=args.hash_type,
                        superblock=not args.no_superblock, uuid=args.uuid or uuidlib.uuid4())


def _print_header(hash_path: str, result: FormatResult) -> None:
    p, layout = result.params, result.layout
    lines = [f"VERITY header information for {hash_path}"]
    if p.superblock:
        lines.append(f"UUID:            \t{p.uuid}")
    lines += [
        f"Hash type:       \t{p.hash_type}",
        f"Data blocks:     \t{layout.data_blocks}",
        f"Data block size: \t{p.data_block_size}",
        f"Hash blocks:     \t{layout.tree_blocks}",
        f"Hash block size: \t{p.hash_block_size}",
        f"Hash algorithm:  \t{p.hash_name}",
        f"Salt:            \t{p.salt.hex() or '-'}",
        f"Root hash:      \t{result.root_hash.hex()}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


def _format(args: argparse.Namespace) -> int:
    salt = os.urandom(DEFAULT_SALT_BYTES) if args.salt is None else _hex(args.salt, "salt")
    result = format_hash(args.data, args.hash, _params_from_args(args, salt),
                         data_blocks=args.data_blocks, hash_offset=args.hash_offset)
    _print_header(args.hash, result)
    return 0


def _verify(args: argparse.Namespace) -> int:
    root = _hex(args.root_hash, "root hash")
    if args.no_superblock:
        if args.salt is None:
            raise UsageError("--salt is required with --no-superblock")
        params = _params_from_args(args, _hex(args.salt, "salt"))
        shared = args.hash_offset if same_file(args.data, args.hash) else None
        blocks = data_blocks_of(args.data, params, args.data_blocks, shared)
    else:
        sb = read_superblock(args.hash, args.hash_offset)
        params, blocks = sb.params, sb.data_blocks
        if args.uuid is not None and args.uuid != params.uuid:
            raise UsageError(f"superblock UUID {params.uuid} is not the expected {args.uuid}")
    verify_hash(args.data, args.hash, root, params, data_blocks=blocks, hash_offset=args.hash_offset)
    sys.stdout.write("Verification of data area succeeded.\n")
    return 0


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    return _format(args) if args.command == "format" else _verify(args)


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
