"""Each app's runtime in a cgroup of its own, below the cgroup systemd delegated to appd.

With `Delegate=` on weft-appd.service, systemd hands appd its cgroup (cgroup v2: the
directory and its cgroup.procs/cgroup.subtree_control are chowned to appd's user). appd
organises it as:

    <own cgroup>/supervisor      appd itself (a cgroup with children may not hold processes)
    <own cgroup>/standby         standby runtimes: appd's own code, no guest code yet
    <own cgroup>/app-<session>   one session's runtime and whatever it starts (file portal,
                                 notify-send): memory.max, memory.swap.max=0, cpu.max,
                                 pids.max, memory.oom.group=1

At launch the runtime's pid moves into its app cgroup *before* the launch message goes out,
so the limits hold before any guest code runs. Memory the standby runtime touched earlier
(the interpreter, wasmtime) stays charged to `standby`: cgroup v2 does not move charges.
When the session ends, cgroup.kill ends anything the runtime left behind, and the cgroup is
removed. The cgroup file system root is a parameter so the logic can be tested on a plain
directory (tests/test_appd_cgroups.py); the VM test checks it against the kernel.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from pathlib import Path

from weft.daemons.appd.config import AppLimits
from weft.errors import WeftError

log = logging.getLogger("weft.appd")

CGROUP_FS = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
SUPERVISOR = "supervisor"
STANDBY = "standby"
EMPTY_WAIT_S = 2.0  # after cgroup.kill: how long the last processes get to disappear
DELEGATION_HINT = ("run weft-appd with cgroup delegation (Delegate=yes in its unit, or "
                   "`systemd-run --user -p Delegate=yes weft-appd`), or set WEFT_APP_CGROUPS=off")


class CgroupError(WeftError):
    pass


def own_cgroup(proc_file: Path = PROC_SELF_CGROUP) -> str:
    """This process's cgroup v2 path (`0::/system.slice/weft-appd.service`)."""
    for line in proc_file.read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise CgroupError(f"{proc_file} has no cgroup v2 entry (a cgroup v1 host?); {DELEGATION_HINT}")


def session_cgroup_name(session_id: int) -> str:
    return f"app-{session_id}"


class AppCgroups:
    """appd's delegated cgroup subtree. `fs_root` is where cgroup2 is mounted."""

    def __init__(self, base: Path, limits: AppLimits):
        self.base = base
        self.limits = limits

    @classmethod
    def delegated(cls, limits: AppLimits, fs_root: Path = CGROUP_FS, own: str | None = None) -> AppCgroups:
        """Check that appd's cgroup is delegated to it and set the subtree up; CgroupError if not."""
        cgroups = cls(fs_root / (own if own is not None else own_cgroup()).lstrip("/"), limits)
        cgroups._check_delegated()
        cgroups._set_up()
        return cgroups

    # -- start-up -------------------------------------------------------------------------

    def _check_delegated(self) -> None:
        try:
            available = (self.base / "cgroup.controllers").read_text().split()
        except OSError as exc:
            raise CgroupError(f"cannot read {self.base}/cgroup.controllers ({exc.strerror}): "
                              f"not a cgroup v2 hierarchy; {DELEGATION_HINT}") from None
        missing = [c for c in CONTROLLERS if c not in available]
        if missing:
            raise CgroupError(f"the {' '.join(missing)} controller(s) are not available in {self.base} "
                              f"(cgroup.controllers: {' '.join(available) or 'none'}); {DELEGATION_HINT}")
        uid = os.geteuid()
        for path in (self.base, self.base / "cgroup.procs", self.base / "cgroup.subtree_control"):
            owner = path.stat().st_uid
            if owner != uid:
                raise CgroupError(f"{path} belongs to uid {owner}, not to this process (uid {uid}): "
                                  f"the cgroup is not delegated to weft-appd; {DELEGATION_HINT}")

    def _set_up(self) -> None:
        for child in self.base.iterdir():  # left over from an appd that did not stop cleanly
            if child.is_dir() and child.name != SUPERVISOR:
                self._kill_and_remove_now(child)
        supervisor = self._make(SUPERVISOR, exist_ok=True)
        # Everything in our cgroup moves to the leaf (appd, and a wrapper that started it).
        for pid in (self.base / "cgroup.procs").read_text().split():
            self._move(int(pid), supervisor, gone_ok=True)
        self._write(self.base / "cgroup.subtree_control", " ".join(f"+{c}" for c in CONTROLLERS))
        self._make(STANDBY, exist_ok=True)

    # -- runtimes -------------------------------------------------------------------------

    def adopt_standby(self, pid: int) -> None:
        """Put a freshly spawned runtime into `standby` (right after the spawn)."""
        self._move(pid, self.base / STANDBY)

    def enter_session(self, pid: int, session_id: int) -> Path:
        """A new cgroup with the app limits for `session_id`, holding `pid`. Call before the
        launch message is sent."""
        cgroup = self._make(session_cgroup_name(session_id), exist_ok=False)
        try:
            self._write(cgroup / "memory.max", str(self.limits.memory_mib << 20))
            self._write(cgroup / "memory.swap.max", "0")
            self._write(cgroup / "memory.oom.group", "1")  # an OOM kill ends the whole session
            self._write(cgroup / "cpu.max", f"{self.limits.cpu_percent * CPU_PERIOD_US // 100} {CPU_PERIOD_US}")
            self._write(cgroup / "pids.max", str(self.limits.pids_max))
            self._move(pid, cgroup)
        except CgroupError:
            self._rmdir(cgroup)
            raise
        return cgroup

    async def release(self, cgroup: Path) -> None:
        """Kill whatever is left in `cgroup` (the runtime has been reaped) and remove it."""
        if self._populated(cgroup):
            self._write(cgroup / "cgroup.kill", "1")
            deadline = asyncio.get_running_loop().time() + EMPTY_WAIT_S
            while self._populated(cgroup) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
        try:
            self._rmdir(cgroup)
        except OSError as exc:
            log.error("cannot remove %s: %s", cgroup, exc.strerror)

    # -- file-system operations (a test may stand in for the kernel's side) ------------------

    def _make(self, name: str, *, exist_ok: bool) -> Path:
        path = self.base / name
        try:
            self._mkdir(path)
        except FileExistsError:
            if not exist_ok:
                raise CgroupError(f"cgroup {path} already exists") from None
        except OSError as exc:
            raise CgroupError(f"cannot create cgroup {path}: {exc.strerror}") from None
        return path

    def _mkdir(self, path: Path) -> None:
        path.mkdir()

    def _rmdir(self, path: Path) -> None:
        path.rmdir()

    def _write(self, path: Path, text: str) -> None:
        # The kernel's files always exist; never create one (a missing file is a missing controller).
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise CgroupError(f"cannot write {text!r} to {path}: {exc.strerror}") from None

    def _move(self, pid: int, cgroup: Path, *, gone_ok: bool = False) -> None:
        try:
            self._write(cgroup / "cgroup.procs", str(pid))
        except CgroupError:
            if gone_ok and not Path(f"/proc/{pid}").exists():
                return
            raise

    def _populated(self, cgroup: Path) -> bool:
        try:
            events = (cgroup / "cgroup.events").read_text()
        except FileNotFoundError:
            return False
        return "populated 1" in events.splitlines()

    def _kill_and_remove_now(self, cgroup: Path) -> None:
        """Start-up cleanup of a stale cgroup: nothing else runs yet, so a short blocking wait is fine."""
        for child in cgroup.iterdir():
            if child.is_dir():
                self._kill_and_remove_now(child)
        if self._populated(cgroup):
            self._write(cgroup / "cgroup.kill", "1")
        for _ in range(200):
            try:
                self._rmdir(cgroup)
                return
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise CgroupError(f"cannot remove stale cgroup {cgroup}: {exc.strerror}") from None
            time.sleep(0.01)
        raise CgroupError(f"stale cgroup {cgroup} stays busy after cgroup.kill")
