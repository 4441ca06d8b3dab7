"""Statements in the docs that code can check, so they stay true."""
from __future__ import annotations

import json
import subprocess
import sys

# docs/app-image-format.md: what the mount helper pulls in by importing the footer module.
FOOTER_WEFT_IMPORTS = {"weft.errors", "weft.manifest", "weft.pack.keys", "weft.verity.params"}
FOOTER_THIRD_PARTY = {"pydantic", "pydantic_core", "annotated_types", "typing_extensions", "typing_inspection", "nacl"}

_PROBE = """
import json, sys
before = set(sys.modules)
import weft.pack.footer
loaded = set(sys.modules) - before
print(json.dumps(sorted(loaded)))
"""


def test_footer_module_imports_what_the_docs_say() -> None:
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                                           check=True).stdout))
    weft = {m for m in loaded if m.split(".")[0] == "weft"}
    third_party = {m.split(".")[0] for m in loaded
                   if m.split(".")[0] not in sys.stdlib_module_names and not m.startswith("_") and m != "weft"
                   and not m.startswith("weft.")}
    assert third_party <= FOOTER_THIRD_PARTY, third_party - FOOTER_THIRD_PARTY
    assert weft >= FOOTER_WEFT_IMPORTS
    # Besides the documented modules: only the packages they live in and the weft.verity
    # modules that importing weft.verity.params loads (standard library only).
    extra = weft - FOOTER_WEFT_IMPORTS - {"weft", "weft.pack", "weft.pack.footer", "weft.verity"}
    assert all(m.startswith("weft.verity.") for m in extra), extra
