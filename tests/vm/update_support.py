"""The update sources of tests/vm/test_updates.py and ci/bench_update.py, made on the host.

ci/test.sh builds releases 2 and 3 of the test image into mkosi.output/test-v2 and test-v3
(3 with tests/vm/releases/broken-appd: its app daemon never starts). `prepare_media` publishes
each with `weft image publish` into a source of its own and writes that onto an ext4 update
medium (labels WEFT-UPD-2 and WEFT-UPD-3; a machine gets both, read-only). Release 3's medium
also carries `tamper/`: small files the tests swap into a source inside the guest —
  SHA256SUMS.flipped      SHA256SUMS with the line of release 2's verity file after the byte at
                          FLIP_OFFSET was flipped (the guest flips the same byte in its copy)
  SHA256SUMS.flipped.gpg-untrusted   that file signed by a key no image trusts
  <id>_9.efi              release 2's UKI with its command line edited (roothash= of release 3)
                          and its Secure Boot signature kept: no longer valid for the edited file
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from vm_support import flip_byte

from weft.image.profiles import output_dir
from weft.image.publish import publish
from weft.image.uki import UkiInfo, pe_sections, uki_info
from weft.image.update_keys import generate_update_key, sign_file, update_key_for
from weft.image.update_medium import write_update_medium
from weft.vm.machine import Machine

REPO = Path(__file__).resolve().parents[2]
SYSUPDATE = "/usr/lib/systemd/systemd-sysupdate"
SOURCE = "/run/weft-updates"  # where the image's sysupdate.d transfers look
RELEASES = ("2", "3")
FLIP_OFFSET = 8192
EDITED_VERSION = "9"


class Release(BaseModel):
    model_config = ConfigDict(frozen=True)
    version: str
    label: str  # the medium's file system label
    medium: Path
    uki: UkiInfo
    files: tuple[str, ...]  # the published artefacts
    bytes: int  # their total size: what one update transfers


def release_build_dir(version: str) -> Path:
    return output_dir(REPO, "test").with_name(f"test-v{version}")


def _edited_uki(uki: Path, old: str, new: str, dest: Path) -> None:
    """A copy of `uki` whose .cmdline has `old` replaced by `new` (same length, in place, so the
    PE layout and the now-stale signature stay)."""
    data = bytearray(uki.read_bytes())
    cmdline = pe_sections(bytes(data))[".cmdline"]
    start = data.find(old.encode(), cmdline.offset, cmdline.offset + cmdline.size)
    assert len(old) == len(new) and start >= 0, f"{old!r} not in {uki}'s command line"
    data[start:start + len(old)] = new.encode()
    dest.write_bytes(bytes(data))


def _tamper_files(source2: Path, release2: UkiInfo, release3: UkiInfo, dest: Path) -> None:
    dest.mkdir()
    verity = next(source2.glob(f"*_{release2.image_version}.root-x86-64-verity.*.raw"))
    flipped = dest / "flipped.tmp"
    shutil.copyfile(verity, flipped)
    flip_byte(flipped, FLIP_OFFSET)
    digest = hashlib.sha256(flipped.read_bytes()).hexdigest()
    flipped.unlink()
    sums = (source2 / "SHA256SUMS").read_text().splitlines()
    edited = [f"{digest}  {verity.name}" if line.endswith(f"  {verity.name}") else line for line in sums]
    assert edited != sums
    (dest / "SHA256SUMS.flipped").write_text("\n".join(edited) + "\n")
    with tempfile.TemporaryDirectory() as keys:
        secret, _pubring = generate_update_key(Path(keys), "untrusted", "Nobody trusts this key")
        signature = sign_file(secret, dest / "SHA256SUMS.flipped")
        signature.rename(dest / "SHA256SUMS.flipped.gpg-untrusted")
    uki2 = next(source2.glob(f"*_{release2.image_version}.efi"))
    _edited_uki(uki2, f"roothash={release2.roothash}", f"roothash={release3.roothash}",
                dest / f"{release2.image_id}_{EDITED_VERSION}.efi")


def prepare_media(workdir: Path) -> dict[str, Release]:
    """Publish releases 2 and 3 and write their update media under `workdir` (emptied first)."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    secret, pubring = update_key_for(REPO, "test")
    sources: dict[str, Path] = {}
    infos: dict[str, UkiInfo] = {}
    results = {}
    for version in RELEASES:
        build = release_build_dir(version)
        if not build.is_dir():
            raise FileNotFoundError(f"{build} is missing: build release {version} first (ci/test.sh does: "
                                    f"weft image build --profile test --image-version {version} --out {build})")
        sources[version] = workdir / f"source-{version}"
        results[version] = publish(build, sources[version], secret, pubring)
        infos[version] = uki_info(next(sources[version].glob("*.efi")))
        assert infos[version].image_version == version, f"{build} holds release {infos[version].image_version}"
    _tamper_files(sources["2"], infos["2"], infos["3"], sources["3"] / "tamper")
    releases = {}
    for version in RELEASES:
        label = f"WEFT-UPD-{version}"
        medium = write_update_medium(sources[version], workdir / f"medium-{version}.img", label=label)
        releases[version] = Release(version=version, label=label, medium=medium, uki=infos[version],
                                    files=tuple(results[version].files), bytes=results[version].bytes)
        # The medium holds its own copy; the source (~1 GB) is not needed any more.
        shutil.rmtree(sources[version])
    os.sync()
    return releases


def running(machine: Machine) -> tuple[str, str]:
    """IMAGE_VERSION and the roothash= of the system running in `machine`."""
    version = machine.succeed(". /usr/lib/os-release && echo $IMAGE_VERSION").strip()
    cmdline = machine.succeed("cat /proc/cmdline")
    match = re.search(r"roothash=([0-9a-f]{64})", cmdline)
    assert match, cmdline
    return version, match.group(1)


def use_medium(machine: Machine, label: str) -> None:
    """Mount the update medium labelled `label` where the transfers look (replacing what was there)."""
    machine.succeed(f"umount {SOURCE} 2>/dev/null; rm -rf {SOURCE}; mkdir -p {SOURCE} && "
                    f"mount -o ro /dev/disk/by-label/{label} {SOURCE}")
