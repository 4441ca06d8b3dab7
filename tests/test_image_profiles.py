"""Image profiles and output names come from mkosi.conf and mkosi.profiles/, nowhere else."""
from __future__ import annotations

from pathlib import Path

import pytest

from weft.errors import WeftError
from weft.image import profiles

REPO = Path(__file__).resolve().parent.parent


def test_this_repository() -> None:
    assert profiles.profiles(REPO) == ("default", "test")
    assert profiles.image_path(REPO, "default") == REPO / "mkosi.output/default/weft.raw"
    assert profiles.image_path(REPO, "test") == REPO / "mkosi.output/test/weft-test.raw"


def test_a_profile_inherits_or_overrides_the_image_id(tmp_path: Path) -> None:
    (tmp_path / "mkosi.conf").write_text("[Distribution]\nImageId=not-this\n[Output]\nFormat=disk\nImageId=base\n")
    (tmp_path / "mkosi.profiles/plain").mkdir(parents=True)
    (tmp_path / "mkosi.profiles/plain/mkosi.conf").write_text("[Content]\nPackages=vim\n")
    (tmp_path / "mkosi.profiles/dev").mkdir()
    (tmp_path / "mkosi.profiles/dev/mkosi.conf").write_text("[Output]\nImageId=first\nImageId=base-dev\n")
    assert profiles.profiles(tmp_path) == ("default", "dev", "plain")
    assert profiles.image_id(tmp_path, "default") == "base"
    assert profiles.image_id(tmp_path, "plain") == "base"
    assert profiles.image_path(tmp_path, "dev", tmp_path / "out") == tmp_path / "out/base-dev.raw"
    with pytest.raises(WeftError, match="no image profile 'nope'"):
        profiles.image_id(tmp_path, "nope")
    (tmp_path / "mkosi.conf").write_text("[Output]\nFormat=disk\n")
    with pytest.raises(WeftError, match="no ImageId="):
        profiles.image_id(tmp_path, "default")


def test_vm_run_boots_the_newest_disk_image_not_a_split_update_partition(tmp_path, monkeypatch):
    import weft.cli
    import weft.vm.run

    (tmp_path / "mkosi.conf").write_text("[Output]\nImageId=weft\n")
    out = tmp_path / "mkosi.output" / "default"
    out.mkdir(parents=True)
    (out / "weft.raw").write_bytes(b"disk")
    (out / "weft.root-x86-64.0513b51dae3afe173456ea5f9456a212.raw").write_bytes(b"newer, but a partition")
    booted = []

    def run_vm(image, **options):
        booted.append(image)
        return 0

    monkeypatch.setattr(weft.cli, "_repo_root", lambda: tmp_path)
    monkeypatch.setattr(weft.vm.run, "run_vm", run_vm)
    assert weft.cli.main(["vm", "run"]) == 0
    assert booted == [out / "weft.raw"]
