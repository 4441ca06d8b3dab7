"""The shared wapp.toml model: reference rules (§2.2-2.4) plus confinement and fetch hosts."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.errors import WeftError
from weft.manifest import ManifestError, is_valid_app_id, parse_manifest, require_app_id, resolve_inside

GOOD = """
[package]
id = "com.example.notes"
name = "Notes"
version = "1.0.0"
capabilities = ["fs:rw:app-data", "net:fetch:api.example.com", "net:fetch:*"]
unknown = "ignored"
[runtime]
module = "bin/app.wasm"
[ui]
entry = "ui/index.html"
[extra]
x = 1
"""


@pytest.mark.parametrize("app_id", ["com.example.notes", "io.github.username.app", "a.b.c", "a1.b2.c3"])
def test_valid_app_ids(app_id):
    assert is_valid_app_id(app_id)


@pytest.mark.parametrize("app_id", ["com.example", "Com.example.notes", "com.example.notes-app",
                                    "com..example.notes", "", "1com.example.notes", "com.example.notes.",
                                    "com/example/notes", "../../etc", None, 3])
def test_invalid_app_ids(app_id):
    assert not is_valid_app_id(app_id)
    with pytest.raises(WeftError, match="not a valid app ID"):
        require_app_id(str(app_id))


def test_good_manifest_parses_and_ignores_unknown_keys():
    m = parse_manifest(GOOD)
    assert m.app_id == "com.example.notes"
    assert m.runtime.module == "bin/app.wasm"
    assert m.fetch_hosts == {"api.example.com", "*"}
    assert m.grants("fs:rw:app-data") and not m.grants("sys:clipboard:read")


def test_every_problem_is_reported():
    text = (GOOD.replace('"com.example.notes"', '"bad"').replace('"Notes"', '""')
            .replace('"net:fetch:*"', '"net:fetch"'))
    with pytest.raises(ManifestError) as info:
        parse_manifest(text)
    problems = info.value.problems
    assert "package.id 'bad' does not match required pattern" in problems
    assert "package.name is empty" in problems
    assert "unknown capability 'net:fetch'" in problems


def test_name_limit_is_in_bytes():
    parse_manifest(GOOD.replace('"Notes"', '"' + "é" * 32 + '"'))
    with pytest.raises(ManifestError, match=r"exceeds 64 characters \(66\)"):
        parse_manifest(GOOD.replace('"Notes"', '"' + "é" * 33 + '"'))


@pytest.mark.parametrize("path", ["../app.wasm", "/etc/passwd", "a/../../b", "", ".", "a//b", "a\\b"])
def test_module_and_entry_stay_inside_the_package(path):
    with pytest.raises(ManifestError, match=re.escape("runtime.module")):
        parse_manifest(GOOD.replace('"bin/app.wasm"', f'"{path}"'.replace("\\", "\\\\")))
    with pytest.raises(ManifestError, match=re.escape("ui.entry")):
        parse_manifest(GOOD.replace('"ui/index.html"', f'"{path}"'.replace("\\", "\\\\")))


@pytest.mark.parametrize("cap", ["net:fetch:", "net:fetch:exa mple.com", "net:fetch:-bad.com", "fs:rw:home"])
def test_bad_capabilities(cap):
    with pytest.raises(ManifestError, match="unknown capability"):
        parse_manifest(GOOD.replace('"net:fetch:*"', f'"{cap}"'))


def test_missing_tables_and_wrong_types():
    with pytest.raises(ManifestError, match="runtime is missing"):
        parse_manifest(GOOD.replace("[runtime]", "[runtimex]"))
    with pytest.raises(ManifestError, match=re.escape("package.capabilities")):
        parse_manifest(GOOD.replace('["fs:rw:app-data", "net:fetch:api.example.com", "net:fetch:*"]', "3"))
    with pytest.raises(ManifestError, match=re.escape("wapp.toml")):
        parse_manifest("[package\n")


def test_resolve_inside_refuses_symlink_escape(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "link").symlink_to("/etc")
    with pytest.raises(WeftError, match="outside"):
        resolve_inside(tmp_path / "pkg", "link/passwd")


toml_scalar = st.one_of(st.text(max_size=20), st.integers(), st.booleans(), st.floats(allow_nan=False))
toml_value = st.recursive(toml_scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=10)


def _toml_literal(value) -> str:
    import json

    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_literal(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=400))
def test_fuzz_arbitrary_text_gives_manifest_errors(text):
    try:
        parse_manifest(text)
    except ManifestError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(["id", "name", "version", "capabilities", "description", "module", "entry"]),
       value=toml_value)
def test_fuzz_field_values_give_manifest_errors(field, value):
    lines = [line for line in GOOD.splitlines() if not line.startswith(f"{field} =")]
    section = {"module": "[runtime]", "entry": "[ui]"}.get(field, "[package]")
    index = lines.index(section) + 1
    lines.insert(index, f"{field} = {_toml_literal(value)}")
    try:
        parse_manifest("\n".join(lines))
    except ManifestError as exc:
        assert exc.problems
