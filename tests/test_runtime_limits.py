"""The guest memory cap holds in total: several memories, table growth and the GC heap cannot exceed it."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from platform_support import Env, RuntimeUnderTest
from wasmtime import Module, WasmtimeError

from weft.daemons.runtime.engine import EngineOptions, make_engine
from weft.daemons.runtime.limits import GuestLimits
from weft.daemons.runtime.session import ExitCode

MIB = 1 << 20


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"{field} missing from /proc/{pid}/status")


@pytest.mark.parametrize("memory_mib", [16, 96, 256, 65536])
def test_limits_add_up_to_at_most_the_cap(memory_mib: int) -> None:
    limits = GuestLimits.for_cap(memory_mib)
    assert limits.worst_case_bytes() <= memory_mib * MIB
    assert limits.memories == 1
    assert limits.table_elements >= 5680  # a componentize-py app's table still fits at the smallest cap


def test_a_component_with_several_memories_is_refused(env: Env, built_apps: dict[str, Path],
                                                      runtime_factory: Callable[..., RuntimeUnderTest]) -> None:
    # Four memories of 64 MiB each under a 96 MiB cap: 256 MiB if the cap only held per memory.
    env.install(built_apps["org.weft.test.memories"])
    runtime: RuntimeUnderTest = runtime_factory("org.weft.test.memories", memory_mib=96)
    assert runtime.next() is None  # never READY: instantiation fails
    assert runtime.process.wait(10) == ExitCode.FAILED
    assert "memory count too high" in runtime.log()
    assert "Traceback" not in runtime.log()


def test_table_growth_counts_against_the_cap(env: Env, built_apps: dict[str, Path],
                                             runtime_factory: Callable[..., RuntimeUnderTest]) -> None:
    env.install(built_apps["org.weft.test.tables"])
    runtime: RuntimeUnderTest = runtime_factory("org.weft.test.tables", memory_mib=64)
    runtime.wait_ready()
    rss_at_ready = _status_kib(runtime.process.pid, "VmRSS")
    assert runtime.ask("big") == "refused"  # 32 Mi elements = 256 MiB of table
    assert runtime.ask("small") == "grown"  # a table still grows within its share
    peak_growth_mib = (_status_kib(runtime.process.pid, "VmHWM") - rss_at_ready) >> 10
    assert peak_growth_mib < 64
    assert runtime.close() == ExitCode.OK


@pytest.mark.parametrize("feature, wat", [
    ("gc", "(module (type (struct (field i32))) (func (result anyref) (struct.new_default 0)))"),
    ("exceptions", "(module (tag) (func (throw 0)))"),
    ("shared memory", "(module (memory 1 1 shared))"),
])
def test_engine_refuses_features_that_allocate_beside_the_limits(feature: str, wat: str) -> None:
    with pytest.raises(WasmtimeError):
        Module(make_engine(EngineOptions()), wat)
