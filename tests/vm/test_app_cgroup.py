"""In the booted image every app session runs in a cgroup of its own below weft-appd.service
(systemd delegates the subtree to appd), with the configured limits, and an app that outgrows
its memory.max is killed by the OOM killer in its own cgroup only."""
from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from vm_support import AS_WEFT

from weft import settings
from weft.image import guests
from weft.pack.image import build_image
from weft.pack.keys import load_signing_key
from weft.vm.machine import Machine
from weft.vm.transfer import push

REPO = Path(__file__).resolve().parents[2]
HOG = REPO / "tests/apps/org.weft.test.hog"
HOG_ID = "org.weft.test.hog"
SHIPPED_ID = "org.weft.demo.counter"  # in the image's system image store
TEST_KEY = REPO / "tests/vm/keys/weft-test.key"  # the test image trusts it
UNIT = "weft-appd.service"
UNIT_CGROUP = "/sys/fs/cgroup/system.slice/weft-appd.service"


@pytest.fixture(scope="module")
def vm(shared_vm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    """The shared VM with the hog app installed as an image signed by the test key."""
    work = tmp_path_factory.mktemp("hog")
    key_file = work / "weft-test.key"
    shutil.copyfile(TEST_KEY, key_file)
    os.chmod(key_file, 0o600)  # a private key others can read is refused
    package = guests.build_package(HOG, work / "built", guests.repo_cache(REPO))
    image = build_image(package, load_signing_key(key_file), work / "vm.wapp", progress=lambda _message: None)
    machine: Machine = shared_vm.get()
    machine.wait_for_unit(UNIT)
    push(machine, image.read_bytes(), "/tmp/vm.wapp")
    machine.succeed("weft-pack install /tmp/vm.wapp")
    yield machine
    machine.execute(f"weft-pack uninstall {HOG_ID}")


def _launch(machine: Machine, app_id: str) -> int:
    output = machine.succeed(f"{AS_WEFT} weft-appctl launch {app_id} --wait-ready --timeout 120", timeout=180)
    return int(output.split()[0])


def _session_cgroup(session_id: int) -> str:
    return f"{UNIT_CGROUP}/app-{session_id}"


def _read(machine: Machine, path: str) -> str:
    return machine.succeed(f"cat {path}").strip()


def test_each_session_runs_in_its_own_cgroup_with_the_configured_limits(vm: Machine, artifacts: Path) -> None:
    session = _launch(vm, SHIPPED_ID)
    cgroup = _session_cgroup(session)
    pids = _read(vm, f"{cgroup}/cgroup.procs").split()
    assert len(pids) == 1, pids
    runtime = pids[0]
    assert "weft.daemons.runtime" in vm.succeed(f"tr '\\0' ' ' < /proc/{runtime}/cmdline")

    status = vm.succeed(f"systemctl status --no-pager --full {UNIT}")
    (artifacts / "weft-appd-status.txt").write_text(status)  # what an operator sees
    assert re.search(rf"[├└]─app-{session}\n\s+│?\s*└─{runtime} ", status), status
    assert re.search(r"[├└]─supervisor\n\s+│?\s*└─\d+ .*weft-appd", status), status
    main_pid = vm.succeed(f"systemctl show --property=MainPID --value {UNIT}").strip()
    assert _read(vm, f"/proc/{main_pid}/cgroup") == "0::/system.slice/weft-appd.service/supervisor"

    assert int(_read(vm, f"{cgroup}/memory.max")) == settings.APP_CGROUP_MEMORY_MIB.default << 20
    assert _read(vm, f"{cgroup}/memory.swap.max") == "0"
    assert _read(vm, f"{cgroup}/memory.oom.group") == "1"
    assert _read(vm, f"{cgroup}/cpu.max") == f"{settings.APP_CPU_PERCENT.default * 1000} 100000"
    assert int(_read(vm, f"{cgroup}/pids.max")) == settings.APP_PIDS_MAX.default

    vm.succeed(f"{AS_WEFT} weft-appctl stop {session}")
    vm.wait_until_succeeds(f"test ! -e {cgroup}", timeout=60)  # removed once the runtime exited


def test_an_app_past_its_memory_max_is_oom_killed_in_its_cgroup_only(vm: Machine) -> None:
    victim, bystander = _launch(vm, HOG_ID), _launch(vm, HOG_ID)
    cgroup = _session_cgroup(victim)
    # The guest's own cap (WEFT_APP_MEMORY_MIB) would stop it first under the shipped limits;
    # lower this one cgroup's memory.max so the kernel's limit is the one that bites.
    current = int(_read(vm, f"{cgroup}/memory.current"))
    vm.succeed(f"echo {current + (48 << 20)} > {cgroup}/memory.max")
    vm.execute(f"for i in $(seq 20); do {AS_WEFT} weft-appctl send {victim} grow && "
               f"{AS_WEFT} weft-appctl recv {victim} --timeout 60 || break; done", timeout=600)

    sessions = {line.split("\t")[0]: line for line in vm.succeed(f"{AS_WEFT} weft-appctl ps").splitlines()}
    assert sessions[str(bystander)] == f"{bystander}\t{HOG_ID}", sessions  # still running
    assert "stopped" in sessions[str(victim)] and "SIGKILL" in sessions[str(victim)], sessions
    kernel = vm.succeed("journalctl -k --no-pager -o cat | grep -i -e oom -e 'out of memory'")
    assert f"oom_memcg=/system.slice/weft-appd.service/app-{victim}" in kernel, kernel
    vm.wait_until_succeeds(f"test ! -e {cgroup}", timeout=60)
    vm.wait_for_unit(UNIT)  # appd itself was not touched
    assert vm.succeed(f"systemctl show --property=NRestarts --value {UNIT}").strip() == "0"
    vm.succeed(f"{AS_WEFT} weft-appctl send {bystander} grow")
    assert vm.succeed(f"{AS_WEFT} weft-appctl recv {bystander} --timeout 60").strip() == "grown"
    vm.succeed(f"{AS_WEFT} weft-appctl stop {bystander}")
