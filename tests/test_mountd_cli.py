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


def test_the_store_mount_and_record_paths_come_from_the_shared_settings(tmp_path: Path) -> None:
    env = {"WEFT_SYSTEM_IMAGE_STORE": str(tmp_path / "system"), "WEFT_IMAGE_STORE": str(tmp_path / "images"),
           "WEFT_APPS_MOUNT_ROOT": str(tmp_path / "mnt"), "WEFT_ROLLBACK_RECORD": str(tmp_path / "versions.json")}
    _, config = parse_command_line(ROOT_ONLY, env=env)
    assert (config.system_images, config.images, config.mount_root, config.rollback_record) == (
        tmp_path / "system", tmp_path / "images", tmp_path / "mnt", tmp_path / "versions.json")
