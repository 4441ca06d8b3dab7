"""appd's per-app cgroups on a plain directory standing in for /sys/fs/cgroup.

`FakeKernel` does the kernel's part: mkdir creates the interface files, cgroup.kill empties
the cgroup, rmdir removes the files. What the real kernel does with the values is checked
in the booted image (tests/vm/test_app_cgroup.py).
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from platform_support import wait_for

from weft.daemons.appd.app_source import DirectorySource, PackageRoot
from weft.daemons.appd.cgroups import AppCgroups, CgroupError, own_cgroup
from weft.daemons.appd.config import AppdConfig, AppLimits
from weft.daemons.appd.hub import Hub
from weft.daemons.appd.runtimes import RuntimePool
from weft.daemons.appd.sessions import SessionManager
from weft.daemons.protocol import SessionState

OWN = "/system.slice/weft-appd.service"
LIMITS = AppLimits(memory_mib=512, cpu_percent=150, pids_max=99)
INTERFACE = {"cgroup.procs": "", "cgroup.events": "populated 0\nfrozen 0\n", "cgroup.kill": "",
             "cgroup.subtree_control": "", "memory.max": "max\n", "memory.swap.max": "max\n",
             "memory.oom.group": "0\n", "cpu.max": "max 100000\n", "pids.max": "max\n"}


class FakeKernel(AppCgroups):
    def _mkdir(self, path: Path) -> None:
        path.mkdir()
        for name, text in INTERFACE.items():
            (path / name).write_text(text)

    def _rmdir(self, path: Path) -> None:
        if "populated 1" in (path / "cgroup.events").read_text():
            raise OSError(16, "Device or resource busy")
        for name in INTERFACE:
            (path / name).unlink(missing_ok=True)
        path.rmdir()

    def _write(self, path: Path, text: str) -> None:
        super()._write(path, text)
        if path.name == "cgroup.kill":
            (path.parent / "cgroup.events").write_text("populated 0\nfrozen 0\n")


@pytest.fixture
def fs_root(tmp_path: Path) -> Path:
    """A delegated appd cgroup holding this process, as systemd leaves it with Delegate=yes."""
    base = tmp_path / OWN.lstrip("/")
    base.mkdir(parents=True)
    for name, text in INTERFACE.items():
        (base / name).write_text(text)
    (base / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (base / "cgroup.procs").write_text(f"{os.getpid()}\n")
    return tmp_path


def _base(fs_root: Path) -> Path:
    return fs_root / OWN.lstrip("/")


def test_set_up_moves_appd_into_a_leaf_and_enables_the_controllers(fs_root: Path) -> None:
    cgroups = FakeKernel.delegated(LIMITS, fs_root, OWN)
    base = _base(fs_root)
    assert cgroups.base == base
    assert (base / "supervisor/cgroup.procs").read_text() == str(os.getpid())
    assert (base / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (base / "standby").is_dir()


def test_stale_cgroups_of_an_earlier_appd_are_removed(fs_root: Path) -> None:
    stale = _base(fs_root) / "app-3"
    FakeKernel(_base(fs_root), LIMITS)._mkdir(stale)
    (stale / "cgroup.events").write_text("populated 1\n")
    FakeKernel.delegated(LIMITS, fs_root, OWN)
    assert not stale.exists()


def test_session_cgroup_gets_the_limits_and_the_pid(fs_root: Path) -> None:
    cgroups = FakeKernel.delegated(LIMITS, fs_root, OWN)
    cgroups.adopt_standby(4242)
    assert (_base(fs_root) / "standby/cgroup.procs").read_text() == "4242"
    cgroup = cgroups.enter_session(4242, 7)
    assert cgroup == _base(fs_root) / "app-7"
    values = {name: (cgroup / name).read_text() for name in INTERFACE}
    assert values["memory.max"] == str(512 * 1024 * 1024)
    assert values["memory.swap.max"] == "0"
    assert values["memory.oom.group"] == "1"
    assert values["cpu.max"] == "150000 100000"
    assert values["pids.max"] == "99"
    assert values["cgroup.procs"] == "4242"
    with pytest.raises(CgroupError, match="app-7 already exists"):
        cgroups.enter_session(4243, 7)


def test_a_missing_limit_file_is_an_error_not_a_silent_skip(fs_root: Path) -> None:
    class NoSwapAccounting(FakeKernel):
        def _mkdir(self, path: Path) -> None:
            super()._mkdir(path)
            (path / "memory.swap.max").unlink()

    cgroups = NoSwapAccounting.delegated(LIMITS, fs_root, OWN)
    with pytest.raises(CgroupError, match=r"memory\.swap\.max"):
        cgroups.enter_session(4242, 1)
    assert not (_base(fs_root) / "app-1").exists()  # nothing half-made is left


def test_release_kills_what_is_left_and_removes_the_cgroup(fs_root: Path) -> None:
    cgroups = FakeKernel.delegated(LIMITS, fs_root, OWN)
    cgroup = cgroups.enter_session(4242, 2)
    (cgroup / "cgroup.events").write_text("populated 1\nfrozen 0\n")  # a file portal outlived the runtime
    asyncio.run(cgroups.release(cgroup))
    assert not cgroup.exists()


def test_not_delegated_to_us_is_refused(fs_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(_base(fs_root)).st_uid + 1)
    with pytest.raises(CgroupError, match="not delegated to weft-appd; run weft-appd with cgroup delegation"):
        FakeKernel.delegated(LIMITS, fs_root, OWN)


def test_missing_controllers_are_refused(fs_root: Path) -> None:
    (_base(fs_root) / "cgroup.controllers").write_text("cpu pids\n")
    with pytest.raises(CgroupError, match=r"the memory controller\(s\) are not available"):
        FakeKernel.delegated(LIMITS, fs_root, OWN)


def test_a_cgroup_v1_host_is_refused(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/user.slice\n1:name=systemd:/user.slice\n")
    with pytest.raises(CgroupError, match="no cgroup v2 entry"):
        own_cgroup(proc)
    proc.write_text("0::/system.slice/weft-appd.service\n")
    assert own_cgroup(proc) == "/system.slice/weft-appd.service"


# A stand-in runtime: on the launch line it checks that it already sits in its session's cgroup
# (so the limits held before any guest code could run), then reports READY.
FAKE_RUNTIME = textwrap.dedent("""
    import json, os, socket, sys, time
    base = sys.argv[1]
    relay = socket.socket(fileno=int(sys.argv[sys.argv.index("--relay-fd") + 1]))
    line = relay.makefile().readline()
    if not line:
        sys.exit(0)  # a standby runtime at appd's shutdown
    launch = json.loads(line)
    procs = open(f"{base}/app-{launch['session_id']}/cgroup.procs").read()
    if procs != str(os.getpid()):
        sys.exit(f"launched before being placed: cgroup.procs={procs!r}")
    relay.sendall(b'{"t":"ready"}\\n')
    time.sleep(60)
""")


def test_a_session_runtime_is_in_its_cgroup_before_the_launch_message(fs_root: Path, tmp_path: Path) -> None:
    script = tmp_path / "fake_runtime.py"
    script.write_text(FAKE_RUNTIME)
    env = {"XDG_RUNTIME_DIR": str(tmp_path), "HOME": str(tmp_path), "WEFT_APP_CGROUPS": "required",
           "WEFT_RUNTIME_BIN": f"{sys.executable} {script} {_base(fs_root)}", "WEFT_RUNTIME_POOL": "1",
           "WEFT_APP_PIDS_MAX": "99"}
    config = AppdConfig.from_env(env)

    async def scenario() -> None:
        cgroups = FakeKernel.delegated(config.app_limits, fs_root, OWN)
        pool = RuntimePool(config, cgroups)
        manager = SessionManager(config, pool, Hub(), DirectorySource(config.store))
        pool.start()
        await asyncio.sleep(0)
        for _ in range(2):  # the first from the pool, the second spawned after it
            session = manager.launch(PackageRoot(app_id="org.example.app", path=tmp_path, publisher="unsigned",
                                                 origin=str(tmp_path)))
            for _ in range(500):
                if session.state != SessionState.STARTING:
                    break
                await asyncio.sleep(0.02)
            assert session.state == SessionState.RUNNING
            assert session.runtime is not None and session.runtime.cgroup == cgroups.base / f"app-{session.id}"
            assert (session.runtime.cgroup / "pids.max").read_text() == "99"
        await manager.stop_all()
        await pool.close()
        assert sorted(p.name for p in cgroups.base.iterdir() if p.is_dir()) == ["standby", "supervisor"]

    asyncio.run(scenario())


def test_appd_refuses_to_start_without_delegation(tmp_path: Path) -> None:
    """This test machine's cgroup is not delegated to the test (nor is it cgroup v2 at all)."""
    env = {"XDG_RUNTIME_DIR": str(tmp_path), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
           "WEFT_APP_CGROUPS": "required", "WEFT_APPD_WS_PORT": "0", "WEFT_RUNTIME_POOL": "0"}
    result = subprocess.run([sys.executable, "-m", "weft.daemons.appd"], env=env, check=False, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: ") and "Delegate=yes" in result.stderr and "Traceback" not in result.stderr
    wait_for(lambda: not (tmp_path / "weft/appd.sock").exists(), 1, "no socket")
