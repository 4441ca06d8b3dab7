"""weft-mountd's command line: the trusted keys are the setting every WEFT program reads.

Before: weft-mountd had its own copy of the trusted-keys path and ignored WEFT_TRUSTED_KEYS,
so `weft-pack list/install` and weft-mountd could trust different keys.
"""
from __future__ import annotations

from pathlib import Path

from weft import settings
from weft.daemons.mountd.cli import parse_command_line

ROOT_ONLY = ["--appd-user", "0"]  # a uid: no lookup of the `weft` user on the test host


def test_the_trusted_keys_default_to_the_setting() -> None:
    _, config = parse_command_line(ROOT_ONLY, env={})
    assert config.trusted_keys == settings.TRUSTED_KEYS.default == Path("/usr/share/weft/trusted-keys")


def test_weft_trusted_keys_names_the_keys(tmp_path: Path) -> None:
    _, config = parse_command_line(ROOT_ONLY, env={"WEFT_TRUSTED_KEYS": str(tmp_path / "keys")})
    assert config.trusted_keys == tmp_path / "keys"


def test_the_flag_wins_over_the_setting(tmp_path: Path) -> None:
    _, config = parse_command_line([*ROOT_ONLY, "--trusted-keys", str(tmp_path / "flag")],
                                   env={"WEFT_TRUSTED_KEYS": str(tmp_path / "setting")})
    assert config.trusted_keys == tmp_path / "flag"
