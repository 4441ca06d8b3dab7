"""One package listing (issue 7): appd's catalogue and `weft-pack list` ask weft.store the same question.

Also issue 7 defect 11: one broken package (a deeply nested manifest gave RecursionError) in
a store must not break the installed-apps query for every client; it is skipped with a warning.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from package_support import write_package
from platform_support import Env

from weft.daemons import protocol
from weft.daemons.appd.catalog import installed_apps
from weft.store import StorePaths

PACK = [sys.executable, "-m", "weft.pack.cli"]
NESTED = "[extra]\nx = " + "[" * 5000 + "]" * 5000 + "\n"


def _populate(system: Path, user: Path) -> None:
    """A system store and a user store with every kind of entry the rules decide about."""
    write_package(system / "org.weft.shipped", app_id="org.weft.shipped", name="Shipped")
    write_package(user / "org.weft.shipped", app_id="org.weft.shipped", name="Impostor")  # shadowing attempt
    write_package(user / "com.example.good", app_id="com.example.good", name="Good")
    write_package(user / "com.example.also", app_id="com.example.also", name="Also")
    nested = write_package(user / "com.example.nested", app_id="com.example.nested")
    with open(nested / "wapp.toml", "a") as fh:
        fh.write(NESTED)
    write_package(user / "com.example.renamed", app_id="com.example.other")  # directory name != manifest id
    fifo = user / "com.example.fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "wapp.toml")
    (user / "com.example.empty").mkdir()
    write_package(user / "Not_An_Id")
    (user / "com.example.file").write_text("not a directory")
    (user / ".staging-abc").mkdir()  # an install in progress: not an entry at all


LISTED = ["com.example.also", "com.example.good", "org.weft.shipped"]
SKIPPED = {"com.example.nested": "nested deeper than", "com.example.renamed": "it holds 'com.example.other'",
           "com.example.fifo": "not a regular file", "com.example.empty": "not found",
           "Not_An_Id": "not named by a valid app id", "com.example.file": "not a package directory",
           "org.weft.shipped": "ships with the OS"}


@pytest.fixture
def stores(tmp_path: Path) -> dict[str, str]:
    system, user = tmp_path / "system-apps", tmp_path / "store"
    _populate(system, user)
    return {"HOME": str(tmp_path / "home"), "WEFT_APP_STORE": str(user), "WEFT_SYSTEM_APP_STORE": str(system),
            "WEFT_APP_DATA": str(tmp_path / "data"), "WEFT_IMAGE_STORE": str(tmp_path / "images"),
            "WEFT_SYSTEM_IMAGE_STORE": str(tmp_path / "system-images")}


def test_the_listing_follows_the_rules(stores: dict[str, str]) -> None:
    listing = StorePaths.from_env(stores).list_packages()
    assert [(p.app_id, p.manifest.package.name, p.store) for p in listing.packages] == [
        ("com.example.also", "Also", "user"), ("com.example.good", "Good", "user"),
        ("org.weft.shipped", "Shipped", "system")]
    reasons = {entry.path.name: entry.reason for entry in listing.skipped}
    assert reasons.keys() == SKIPPED.keys()
    for name, fragment in SKIPPED.items():
        assert fragment in reasons[name], (name, reasons[name])
    assert all(entry.path.parent == Path(stores["WEFT_APP_STORE"]) for entry in listing.skipped)


def test_appd_catalogue_and_weft_pack_list_agree(stores: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="weft.appd"):
        catalogue = installed_apps(StorePaths.from_env(stores))
    proc = subprocess.run([*PACK, "list", "--json"], capture_output=True, text=True, env={**os.environ, **stores})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    listed = [entry for entry in json.loads(proc.stdout) if entry["kind"] == "directory"]
    assert [a.app_id for a in catalogue] == [e["id"] for e in listed] == LISTED
    assert [(a.name, a.version) for a in catalogue] == [(e["name"], e["version"]) for e in listed]
    # both report every skipped entry: appd in its log, weft-pack on stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: skipping ")]
    assert len(warnings) == len(caplog.records) == len(SKIPPED)


def test_weft_pack_list_human_output_skips_with_warnings(stores: dict[str, str]) -> None:
    proc = subprocess.run([*PACK, "list"], capture_output=True, text=True, env={**os.environ, **stores})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.splitlines() == ["com.example.also  Also  1.0.0  directory (user)",
                                        "com.example.good  Good  1.0.0  directory (user)",
                                        "org.weft.shipped  Shipped  1.0.0  directory (system)"]
    assert "ships with the OS" in proc.stderr and "nested deeper than" in proc.stderr


def test_the_catalogue_logs_a_problem_once_not_at_every_query(stores: dict[str, str],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    store = StorePaths.from_env(stores)
    with caplog.at_level(logging.WARNING, logger="weft.appd"):
        installed_apps(store)
        assert len(caplog.records) == len(SKIPPED)
        caplog.clear()
        installed_apps(store)
    assert caplog.records == []


def test_a_missing_or_unreadable_store_is_not_an_error(tmp_path: Path) -> None:
    store = StorePaths(install_root=tmp_path / "absent", system_root=None, app_data_root=None, cache_root=tmp_path)
    assert store.list_packages().packages == ()


def test_appd_answers_the_installed_apps_query_despite_a_broken_package(env: Env, built_apps: dict[str, Path],
                                                                        appd_factory) -> None:
    env.install(built_apps["org.weft.demo.counter"])
    nested = write_package(env.store / "com.example.nested", app_id="com.example.nested")
    with open(nested / "wapp.toml", "a") as fh:
        fh.write(NESTED)
    appd = appd_factory(WEFT_RUNTIME_POOL="0")
    reply = appd.request(protocol.QueryInstalledApps())
    assert isinstance(reply, protocol.InstalledApps), reply
    assert [app.app_id for app in reply.apps] == ["org.weft.demo.counter"]
    assert appd.request(protocol.QueryRunning()).sessions == []  # appd still answers
    appd.stop()
    log = appd.log.read_text()
    assert "skipping" in log and "com.example.nested" in log and "RecursionError" not in log
