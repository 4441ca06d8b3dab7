"""`weft-boot-check`: is this boot healthy enough to be marked good?

Runs once per boot (units/weft-boot-check.service), before boot-complete.target. systemd-boot
counts the boots of a freshly installed version (its UKI is EFI/Linux/weft_<v>+3.efi);
systemd-bless-boot marks the version good only once boot-complete.target is reached, which
needs this check to pass. The check waits until each WEFT service it is given is active.

On failure it exits non-zero (boot-complete.target fails, the version is not blessed) and, if
this boot is being counted, reboots: systemd-boot then tries the version again until its tries
run out and falls back to the last good one by itself (docs/updates.md). A boot that is not
counted (the factory version, or one already blessed) has nothing to fall back to, so it stays
up with the failure visible in `systemctl --failed`.
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel

from weft.cli_support import add_debug_flag, run_cli
from weft.errors import UsageError, WeftError
from weft.proc import run

log = logging.getLogger("weft.boot_check")

# systemd-boot sets LoaderBootCountPath (vendor GUID of the Boot Loader Interface) when the
# entry it booted has a tries counter: the boot is on trial.
BOOT_COUNT_VARIABLE = Path("/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f")
POLL_S = 1.0


class UnitState(BaseModel):
    name: str
    active: str  # ActiveState: active, activating, failed, inactive, ...
    sub: str  # SubState: running, auto-restart, failed, dead, ...

    @property
    def healthy(self) -> bool:
        return self.active == "active"

    @property
    def given_up(self) -> bool:
        """Failed for good: no restart is pending (auto-restart is a SubState of activating or failed)."""
        return self.active in ("failed", "inactive") and self.sub != "auto-restart"


def unit_state(name: str) -> UnitState:
    out = run(["systemctl", "show", "--property=ActiveState,SubState", "--", name]).stdout.decode()
    fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return UnitState(name=name, active=fields.get("ActiveState", "unknown"), sub=fields.get("SubState", "unknown"))


def wait_healthy(units: Sequence[str], timeout: float, state: Callable[[str], UnitState] = unit_state,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    """Return once every unit is active; WeftError as soon as one has failed for good, or at `timeout`."""
    deadline = clock() + timeout
    waiting = list(units)
    while True:
        states = [state(name) for name in waiting]
        if failed := [s for s in states if s.given_up]:
            raise WeftError("not healthy: " + ", ".join(f"{s.name} is {s.active} ({s.sub})" for s in failed))
        waiting = [s.name for s in states if not s.healthy]
        if not waiting:
            return
        if clock() >= deadline:
            raise WeftError(f"not healthy after {timeout:.0f} s: " +
                            ", ".join(f"{s.name} is {s.active} ({s.sub})" for s in states if not s.healthy))
        sleep(POLL_S)


def boot_is_counted(variable: Path = BOOT_COUNT_VARIABLE) -> bool:
    return variable.exists()


def _main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="weft-boot-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("units", nargs="+", metavar="UNIT", help="a unit that must be active, e.g. weft-appd.service")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for all of them (default 180)")
    parser.add_argument("--no-reboot", action="store_true", help="never reboot, even when this boot is counted")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    try:
        wait_healthy(args.units, args.timeout)
    except WeftError as exc:
        if boot_is_counted() and not args.no_reboot:
            log.error("boot check failed: %s; this version is on trial, rebooting so that the boot loader "
                      "can count the failed try (it falls back to the last good version when the tries run out)", exc)
            run(["systemctl", "reboot", "--no-block"])
        raise
    log.info("boot check passed: %s active%s", ", ".join(args.units),
             " (this version will be marked good)" if boot_is_counted() else "")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)
