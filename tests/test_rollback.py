"""The rollback record: version order, raise-only updates, administrator downgrade, fail-closed reads."""
from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from weft.rollback import (
    RollbackError,
    RollbackRecord,
    RollbackRecordError,
    VersionOrderError,
    compare_versions,
    version_key,
)


@pytest.fixture
def record(tmp_path: Path) -> RollbackRecord:
    return RollbackRecord(tmp_path / "weft-mountd" / "versions.json")


@pytest.mark.parametrize("older,newer", [
    ("0.1.0", "0.1.1"), ("1.9", "1.10"), ("1.2", "1.2.1"), ("0.9.99", "1"), ("1", "2.0.0"), ("9", "10"),
])
def test_versions_order_numerically(older, newer):
    assert compare_versions(older, newer) == -1 and compare_versions(newer, older) == 1


@pytest.mark.parametrize("a,b", [("1.2", "1.2.0"), ("1", "1.0.0.0"), ("0", "0.0")])
def test_trailing_zeros_do_not_count(a, b):
    assert compare_versions(a, b) == 0 and version_key(a) == version_key(b)


@pytest.mark.parametrize("version", ["1.0-beta", "v2", "1.02", "1..2", ".1", "1.", "", "1.0+build", "1_0",
                                     "1234567890"])
def test_versions_it_cannot_order_are_refused(version):
    with pytest.raises(VersionOrderError, match="cannot be ordered"):
        version_key(version)


def test_record_only_raises(record):
    assert record.highest("org.weft.demo.counter") is None
    record.record("org.weft.demo.counter", "1.2")
    record.record("org.weft.demo.counter", "1.1")
    record.record("org.weft.demo.counter", "1.2.0")
    assert record.highest("org.weft.demo.counter") == "1.2"
    record.record("org.weft.demo.counter", "1.10")
    record.record("org.weft.demo.notes", "0.1.0")
    assert record.load() == {"org.weft.demo.counter": "1.10", "org.weft.demo.notes": "0.1.0"}


def test_check_refuses_older_and_names_the_way_out(record):
    record.record("org.weft.demo.counter", "2.0")
    record.check("org.weft.demo.counter", "2.0.0")
    record.check("org.weft.demo.counter", "2.1")
    record.check("org.weft.demo.notes", "0.0.1")  # no entry: anything goes
    with pytest.raises(RollbackError, match=r"older than version 2\.0.*--allow-downgrade' \(as root\)"):
        record.check("org.weft.demo.counter", "1.99")


def test_allow_downgrade_lowers_the_entry(record):
    record.record("org.weft.demo.counter", "2.0")
    record.allow_downgrade("org.weft.demo.counter", "1.0")
    assert record.highest("org.weft.demo.counter") == "1.0"
    with pytest.raises(VersionOrderError):
        record.allow_downgrade("org.weft.demo.counter", "1.0-rc1")


def test_file_is_0644_json_and_leaves_no_temporary_file(record):
    old_umask = os.umask(0o077)
    try:
        record.record("org.weft.demo.counter", "1.0")
    finally:
        os.umask(old_umask)
    assert oct(record.path.stat().st_mode & 0o777) == "0o644"
    assert json.loads(record.path.read_text()) == {"org.weft.demo.counter": "1.0"}
    assert os.listdir(record.path.parent) == ["versions.json"]


@pytest.mark.parametrize("content,message", [
    (b"{not json", "malformed"),
    (b'{"../../etc": "1.0"}', "malformed"),
    (b'{"org.weft.demo.counter": 1}', "malformed"),
    (b"[]", "malformed"),
])
def test_a_damaged_record_fails_closed(record, content, message):
    record.path.parent.mkdir(parents=True)
    record.path.write_bytes(content)
    with pytest.raises(RollbackRecordError, match=message):
        record.highest("org.weft.demo.counter")
    with pytest.raises(RollbackRecordError):
        record.record("org.weft.demo.counter", "1.0")
    assert record.path.read_bytes() == content  # never replaced by a guess


def _raise_many(path: str, app: str) -> None:
    record = RollbackRecord(Path(path))
    for minor in range(30):
        record.record(app, f"1.{minor}")


def test_concurrent_writers_lose_no_entry(record):
    apps = [f"org.weft.demo.app{i}" for i in "abcd"]
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_raise_many, args=(str(record.path), app)) for app in apps]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert record.load() == dict.fromkeys(apps, "1.29")
