"""How one session's memory cap becomes wasmtime store limits that hold in total.

wasmtime's `memory_size` and `table_elements` limits apply to each memory and each table
separately, so on their own a component with several memories, or one huge `table.grow`,
could take many times the cap. The cap is therefore split: at most MAX_MEMORIES linear
memories share 7/8 of it, at most MAX_TABLES tables share the rest, and the number of core
instances is bounded too. Every toolchain WEFT builds with (componentize-py, wasm-tools for
WAT) produces exactly one memory; a component that defines more fails to instantiate with
wasmtime's "memory count too high". The GC heap, which these limits do not count, is
switched off in the engine (see engine.py).
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from wasmtime import Store

from weft.settings import MemoryMib

MAX_MEMORIES = 1
MAX_TABLES = 8  # a componentize-py app has 2 (its own and the component's shim table)
MAX_INSTANCES = 64  # core module instances; a componentize-py app has 14
TABLE_ELEMENT_BYTES = 16  # wasmtime stores 8 today (a funcref pointer); counted twice for headroom
TABLE_SHARE = 8  # tables get 1/8 of the cap


class GuestLimits(BaseModel):
    model_config = ConfigDict(frozen=True)
    memory_size: int  # bytes, for each of at most `memories` linear memories
    memories: int
    table_elements: int  # for each of at most `tables` tables
    tables: int
    instances: int

    @classmethod
    def for_cap(cls, memory_mib: MemoryMib) -> GuestLimits:
        cap = memory_mib << 20
        table_budget = cap // TABLE_SHARE
        return cls(memory_size=(cap - table_budget) // MAX_MEMORIES, memories=MAX_MEMORIES,
                   table_elements=table_budget // (MAX_TABLES * TABLE_ELEMENT_BYTES), tables=MAX_TABLES,
                   instances=MAX_INSTANCES)

    def worst_case_bytes(self) -> int:
        """What the guest can hold in memories and tables when it uses every limit to the full."""
        return self.memory_size * self.memories + self.table_elements * TABLE_ELEMENT_BYTES * self.tables

    def apply(self, store: Store) -> None:
        store.set_limits(memory_size=self.memory_size, memories=self.memories, table_elements=self.table_elements,
                         tables=self.tables, instances=self.instances)
