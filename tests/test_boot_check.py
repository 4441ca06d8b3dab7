"""weft-boot-check's decision (which units count as healthy, failed for good, or still coming),
and its command line; the reboot and boot-complete.target are exercised in tests/vm/test_updates.py."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from weft import boot_check
from weft.boot_check import UnitState, wait_healthy
from weft.errors import WeftError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def states(sequence: dict[str, list[tuple[str, str]]]) -> tuple[Clock, object]:
    """A clock and a unit_state stand-in that walks each unit through its (ActiveState, SubState) list."""
    clock = Clock()
    iters: dict[str, Iterator[tuple[str, str]]] = {name: iter(seq) for name, seq in sequence.items()}
    last: dict[str, tuple[str, str]] = {}

    def state(name: str) -> UnitState:
        last[name] = next(iters[name], last.get(name, ("unknown", "unknown")))
        return UnitState(name=name, active=last[name][0], sub=last[name][1])

    return clock, state


def test_returns_once_every_unit_is_active() -> None:
    clock, state = states({"a.service": [("activating", "start"), ("active", "running")],
                           "b.service": [("active", "running")]})
    wait_healthy(["a.service", "b.service"], 60, state=state, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert clock.now == pytest.approx(boot_check.POLL_S)


def test_a_unit_that_keeps_restarting_is_waited_for() -> None:
    clock, state = states({"a.service": [("activating", "auto-restart"), ("failed", "auto-restart"),
                                         ("active", "running")]})
    wait_healthy(["a.service"], 60, state=state, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]


def test_a_unit_that_failed_for_good_fails_at_once() -> None:
    clock, state = states({"a.service": [("activating", "auto-restart"), ("failed", "failed")],
                           "b.service": [("active", "running")]})
    with pytest.raises(WeftError, match=r"not healthy: a\.service is failed \(failed\)"):
        wait_healthy(["a.service", "b.service"], 60, state=state, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert clock.now < 60


def test_a_unit_that_never_comes_up_fails_at_the_timeout() -> None:
    clock, state = states({"a.service": [("activating", "start")]})
    with pytest.raises(WeftError, match=r"not healthy after 10 s: a\.service is activating \(start\)"):
        wait_healthy(["a.service"], 10, state=state, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert clock.now == pytest.approx(10)


def test_a_stopped_unit_is_not_healthy() -> None:
    clock, state = states({"a.service": [("inactive", "dead")]})
    with pytest.raises(WeftError, match="inactive"):
        wait_healthy(["a.service"], 10, state=state, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]


def test_boot_is_counted_when_the_loader_set_the_variable(tmp_path) -> None:
    variable = tmp_path / "LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
    assert not boot_check.boot_is_counted(variable)
    variable.write_bytes(b"\x06\x00\x00\x00")
    assert boot_check.boot_is_counted(variable)


def test_failure_on_a_counted_boot_reboots_and_exits_non_zero(monkeypatch, capsys) -> None:
    calls: list[list[str]] = []

    def fail(units, timeout):
        raise WeftError("not healthy: weft-appd.service is failed (failed)")

    monkeypatch.setattr(boot_check, "wait_healthy", fail)
    monkeypatch.setattr(boot_check, "boot_is_counted", lambda: True)
    monkeypatch.setattr(boot_check, "run", lambda argv: calls.append(list(argv)))
    assert boot_check.main(["weft-appd.service"]) == 1
    assert calls == [["systemctl", "reboot", "--no-block"]]
    assert "weft-appd.service is failed" in capsys.readouterr().err


def test_failure_on_an_uncounted_boot_only_fails(monkeypatch) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(boot_check, "wait_healthy", lambda units, timeout: (_ for _ in ()).throw(WeftError("x")))
    monkeypatch.setattr(boot_check, "boot_is_counted", lambda: False)
    monkeypatch.setattr(boot_check, "run", lambda argv: calls.append(list(argv)))
    assert boot_check.main(["weft-appd.service"]) == 1
    assert calls == []


def test_no_reboot_flag_and_bad_arguments(monkeypatch, capsys) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(boot_check, "wait_healthy", lambda units, timeout: (_ for _ in ()).throw(WeftError("x")))
    monkeypatch.setattr(boot_check, "boot_is_counted", lambda: True)
    monkeypatch.setattr(boot_check, "run", lambda argv: calls.append(list(argv)))
    assert boot_check.main(["--no-reboot", "weft-appd.service"]) == 1
    assert calls == []
    assert boot_check.main(["--timeout", "0", "a.service"]) == 2
    assert "--timeout must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        boot_check.main([])
    assert exited.value.code == 2
