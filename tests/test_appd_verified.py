"""appd launching apps from verified images through weft-mountd (WEFT_APP_SOURCE=verified).

weft-mountd needs device-mapper, so a stand-in (tests/fake_mountd.py) speaks its protocol on a
Unix socket in the test's runtime dir and "mounts" a copy of a package directory. Everything
else is real: appd, weft-appctl, runtimes, components, the compile cache.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fake_mountd import GOOD_ROOT_HASH, PUBLISHER, FakeMountd, Image
from platform_support import Appd, Env, wait_for, with_capabilities

from weft.daemons import protocol
from weft.daemons.appctl import LAUNCH_EXIT_CODES
from weft.daemons.protocol import EndReason, LaunchReason, MountReason, SessionState
from weft.daemons.runtime.engine import ComponentCache, EngineOptions, make_engine

COUNTER = "org.weft.demo.counter"
BIN = Path(sys.executable).parent


@pytest.fixture
def mountd(env: Env, built_apps: dict[str, Path]) -> Iterator[FakeMountd]:
    mount_root = env.root / "run-weft-apps"
    mount_root.mkdir()
    fake = FakeMountd(env.runtime_dir / "mountd.sock", mount_root)
    fake.images[COUNTER] = Image(built_apps[COUNTER])
    yield fake
    fake.close()


def verified_env(env: Env, mountd: FakeMountd) -> dict[str, str]:
    return {"WEFT_APP_SOURCE": "verified", "WEFT_MOUNTD_SOCKET": str(mountd.socket_path),
            "WEFT_APPS_MOUNT_ROOT": str(mountd.mount_root), "WEFT_IMAGE_STORE": str(env.root / "images"),
            "WEFT_SYSTEM_IMAGE_STORE": str(env.root / "system-images")}


@pytest.fixture
def verified_appd(env: Env, mountd: FakeMountd, appd_factory: Callable[..., Appd]) -> Appd:
    return appd_factory(**verified_env(env, mountd))


def appctl(env: Env, appd: Appd, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "weft-appctl"), "--socket", str(appd.socket), *argv], env=env.vars,
                          capture_output=True, text=True, timeout=60)


def runtime_pid(appd: Appd, session_id: int) -> int:
    """The session's runtime process, as appd logged it."""
    found = re.search(rf"session {session_id}: \S+ in runtime (\d+)", appd.log.read_text())
    assert found, appd.log.read_text()
    return int(found.group(1))


# -- launching through weft-mountd --------------------------------------------------------------------

def test_a_launch_mounts_the_image_and_the_runtime_reads_the_mount(env, mountd, verified_appd):
    sid = verified_appd.launch(COUNTER)
    assert verified_appd.roundtrip(sid, "increment") == '{"count":1}'
    assert mountd.count("mount_app", COUNTER) == 1 and mountd.total_refs(COUNTER) == 1
    log = verified_appd.log.read_text()
    assert f"verified image {env.root / 'images' / (COUNTER + '.wapp')}" in log
    assert f"mounted at {mountd.mount_root / COUNTER}" in log
    verified_appd.request(protocol.TerminateApp(session_id=sid))
    verified_appd.wait_state(sid, SessionState.STOPPED)
    wait_for(lambda: mountd.count("unmounted", COUNTER) == 1, what="unmount at the session's end")


def test_app_data_is_bound_to_the_publisher_weft_mountd_verified(env, mountd, built_apps, tmp_path, appd_factory):
    app_id = "org.weft.test.owner"
    package = with_capabilities(built_apps["org.weft.test.probe"], tmp_path / "pkg", app_id, ["fs:rw:app-data"])
    mountd.images[app_id] = Image(package)
    appd = appd_factory(**verified_env(env, mountd))
    sid = appd.launch(app_id, timeout=120)
    assert appd.roundtrip(sid, "files-write:/data/secret.txt:kept") == "written"
    assert (env.data / app_id / PUBLISHER / "secret.txt").read_text() == "kept"
    assert not (env.data / app_id / "unsigned").exists()


def test_two_sessions_share_one_mount_and_the_last_end_unmounts(env, mountd, verified_appd):
    first, second = verified_appd.launch(COUNTER), verified_appd.launch(COUNTER)
    assert mountd.count("mounted", COUNTER) == 1 and mountd.total_refs(COUNTER) == 2
    verified_appd.request(protocol.TerminateApp(session_id=first))
    verified_appd.wait_state(first, SessionState.STOPPED)
    wait_for(lambda: mountd.total_refs(COUNTER) == 1, what="one reference dropped")
    assert mountd.count("unmounted", COUNTER) == 0 and (mountd.mount_root / COUNTER / "wapp.toml").is_file()
    assert verified_appd.roundtrip(second, "increment") == '{"count":1}'  # still running from the mount
    verified_appd.request(protocol.TerminateApp(session_id=second))
    verified_appd.wait_state(second, SessionState.STOPPED)
    wait_for(lambda: mountd.count("unmounted", COUNTER) == 1, what="the last end unmounts")
    assert mountd.count("unmount_app", COUNTER) == 2 and not (mountd.mount_root / COUNTER).exists()


def test_a_lost_connection_to_weft_mountd_is_reestablished_and_the_reference_taken_back(env, mountd,
                                                                                       verified_appd):
    sid = verified_appd.launch(COUNTER)
    mountd.drop_connections()  # a helper restart: the connection and its references are gone
    wait_for(lambda: mountd.count("mount_app", COUNTER) == 2 and mountd.total_refs(COUNTER) == 1,
             what="the reference taken back on a new connection")
    assert verified_appd.roundtrip(sid, "increment") == '{"count":1}'
    verified_appd.request(protocol.TerminateApp(session_id=sid))
    wait_for(lambda: mountd.total_refs(COUNTER) == 0, what="the reference dropped at the end")


# -- refusals reach people ------------------------------------------------------------------------

REFUSALS = list(MountReason)


def test_each_refusal_reaches_weft_appctl_with_its_reason_and_exit_code(env, mountd, verified_appd):
    image = env.root / "images" / f"{COUNTER}.wapp"
    for reason in REFUSALS:
        mountd.refuse[COUNTER] = (reason, f"{image}: refused because {reason.value}")
        result = appctl(env, verified_appd, "launch", COUNTER)
        assert result.stderr == f"error: {COUNTER}: {reason.value}: {image}: refused because {reason.value}\n"
        assert result.returncode == LAUNCH_EXIT_CODES[reason.value]
        reply = verified_appd.request(protocol.LaunchApp(app_id=COUNTER))
        assert isinstance(reply, protocol.Error) and reply.code == protocol.ErrorCode.LAUNCH_FAILED
        assert reply.reason == reason.value
    assert verified_appd.request(protocol.QueryRunning()) == protocol.RunningApps(sessions=[])
    assert mountd.total_refs(COUNTER) == 0


def test_a_message_without_the_image_gets_its_name(env, mountd, verified_appd):
    mountd.refuse[COUNTER] = (MountReason.MOUNT_FAILED, "device-mapper said EBUSY")
    result = appctl(env, verified_appd, "launch", COUNTER)
    image = env.root / "images" / f"{COUNTER}.wapp"
    assert result.stderr == f"error: {COUNTER}: mount_failed: {image}: device-mapper said EBUSY\n"


def test_exit_codes_are_distinct_and_cover_every_reason():
    assert {r.value for r in MountReason} <= {r.value for r in LaunchReason}  # mountd's pass through
    assert set(LAUNCH_EXIT_CODES) == {r.value for r in LaunchReason} | {r.value for r in EndReason}
    codes = [code for reason, code in LAUNCH_EXIT_CODES.items() if reason != EndReason.CORRUPTED]
    assert len(set(codes)) == len(codes) and not {0, 1, 2} & set(codes)
    assert LAUNCH_EXIT_CODES[EndReason.CORRUPTED] == LAUNCH_EXIT_CODES[LaunchReason.CORRUPTED]


def test_no_fallback_to_a_package_directory_when_weft_mountd_refuses(env, mountd, built_apps, verified_appd):
    env.install(built_apps[COUNTER])  # a package directory with the same id sits in the store
    mountd.refuse[COUNTER] = (MountReason.BAD_SIGNATURE, "bad signature")
    result = appctl(env, verified_appd, "launch", COUNTER, "--wait-ready")
    assert result.returncode == LAUNCH_EXIT_CODES["bad_signature"] and ": bad_signature: " in result.stderr
    assert verified_appd.request(protocol.QueryRunning()) == protocol.RunningApps(sessions=[])
    assert "runtime" not in verified_appd.log.read_text().split("bad signature", 1)[1]


def test_without_weft_mountd_nothing_launches(env, mountd, built_apps, appd_factory):
    env.install(built_apps[COUNTER])
    appd = appd_factory(**{**verified_env(env, mountd), "WEFT_MOUNTD_SOCKET": str(env.root / "absent.sock")})
    result = appctl(env, appd, "launch", COUNTER)
    assert result.returncode == LAUNCH_EXIT_CODES["mountd_unavailable"]
    assert result.stderr.startswith(f"error: {COUNTER}: mountd_unavailable: cannot connect to weft-mountd at ")
    assert appd.request(protocol.QueryRunning()) == protocol.RunningApps(sessions=[])


@pytest.mark.parametrize("reply, problem", [
    ({"publisher": None}, "did not say which trusted key verified"),
    ({"mount_path": "/tmp/elsewhere"}, "at /tmp/elsewhere, not"),
])
def test_a_mount_reply_appd_cannot_trust_is_refused_and_dropped(env, mountd, verified_appd, reply, problem):
    if "publisher" in reply:
        mountd.images[COUNTER].publisher = reply["publisher"]
    else:
        mountd.mount_path[COUNTER] = reply["mount_path"]
    result = appctl(env, verified_appd, "launch", COUNTER)
    assert result.returncode == LAUNCH_EXIT_CODES["mount_failed"] and problem in result.stderr
    assert mountd.count("unmount_app", COUNTER) == 1 and mountd.total_refs(COUNTER) == 0


# -- corruption that shows only when read -----------------------------------------------------------

def test_corruption_at_read_time_ends_the_session_with_an_error_naming_the_image(env, mountd, built_apps, tmp_path,
                                                                                 verified_appd):
    env.install(built_apps[COUNTER])  # a good copy elsewhere is never tried
    broken = tmp_path / "broken" / COUNTER
    broken.parent.mkdir()
    shutil.copytree(built_apps[COUNTER], broken)
    (broken / "app.wasm").write_bytes(b"\0asm" + b"\xff" * 64)  # what a failed read leaves the runtime with
    mountd.images[COUNTER] = Image(broken, root_hash="b2" * 32)
    mountd.corrupted.add(COUNTER)
    image = env.root / "images" / f"{COUNTER}.wapp"
    expected = f"dm-verity detected corruption in {image}"

    result = appctl(env, verified_appd, "launch", COUNTER, "--wait-ready")
    assert result.returncode == LAUNCH_EXIT_CODES["corrupted"], result.stderr
    assert result.stderr.startswith(f"error: {COUNTER}: corrupted: session ") and expected in result.stderr
    sid = int(result.stderr.split("session ", 1)[1].split(" ", 1)[0])
    state = verified_appd.request(protocol.QueryAppState(session_id=sid))
    assert state == protocol.AppState(session_id=sid, state=SessionState.STOPPED, reason="corrupted", error=expected)
    ps = appctl(env, verified_appd, "ps")
    assert ps.stdout == f"{sid}\t{COUNTER}\tstopped\tcorrupted: {expected}\n"
    ps_json = json.loads(appctl(env, verified_appd, "ps", "--json").stdout)
    assert ps_json["sessions"] == [] and ps_json["ended_with_error"][0]["error"] == expected
    assert mountd.count("check_app", COUNTER) == 1
    assert mountd.count("mount_app", COUNTER) == 1  # not restarted, nothing retried
    wait_for(lambda: mountd.count("unmounted", COUNTER) == 1, what="the mount released")
    assert expected in verified_appd.log.read_text()


def test_a_running_session_that_dies_on_a_corrupted_block_says_so(env, mountd, verified_appd):
    sid = verified_appd.launch(COUNTER)
    mountd.corrupted.add(COUNTER)
    os.kill(runtime_pid(verified_appd, sid), signal.SIGBUS)  # what a read of an EIO page gives a mapped reader
    verified_appd.wait_state(sid, SessionState.STOPPED)
    state = verified_appd.request(protocol.QueryAppState(session_id=sid))
    image = env.root / "images" / f"{COUNTER}.wapp"
    assert state == protocol.AppState(session_id=sid, state=SessionState.STOPPED, reason="corrupted",
                                      error=f"dm-verity detected corruption in {image}")


def test_a_crash_without_corruption_is_reported_as_a_failure(env, mountd, verified_appd):
    sid = verified_appd.launch(COUNTER)
    os.kill(runtime_pid(verified_appd, sid), signal.SIGKILL)
    verified_appd.wait_state(sid, SessionState.STOPPED)
    state = verified_appd.request(protocol.QueryAppState(session_id=sid))
    assert state == protocol.AppState(session_id=sid, state=SessionState.STOPPED, reason="failed",
                                      error="the app's runtime was killed by SIGKILL")
    assert mountd.count("check_app", COUNTER) == 1
    terminated = verified_appd.launch(COUNTER)
    verified_appd.request(protocol.TerminateApp(session_id=terminated))
    verified_appd.wait_state(terminated, SessionState.STOPPED)
    assert verified_appd.request(protocol.QueryAppState(session_id=terminated)) == protocol.AppState(
        session_id=terminated, state=SessionState.STOPPED)
    assert mountd.count("check_app", COUNTER) == 1  # a stop on request is no reason to look


# -- the compile cache ----------------------------------------------------------------------------

def test_the_cache_key_includes_the_image_root_hash(built_apps, tmp_path):
    options = EngineOptions()
    cache = ComponentCache(make_engine(options), options, tmp_path / "components")
    wasm = (built_apps[COUNTER] / "app.wasm").read_bytes()
    directory = cache.artifact_path(wasm)
    good = cache.artifact_path(wasm, GOOD_ROOT_HASH)
    resigned = cache.artifact_path(wasm, "c3" * 32)
    assert len({directory, good, resigned}) == 3


def test_a_verified_launch_keys_the_cache_on_the_mounted_bytes_and_the_root_hash(env, mountd, built_apps, tmp_path,
                                                                               appd_factory):
    cache_dir = tmp_path / "fresh-cache"
    appd = appd_factory(**verified_env(env, mountd), WEFT_CACHE_DIR=str(cache_dir))
    options = EngineOptions()
    keys = ComponentCache(make_engine(options), options, cache_dir / "components")
    wasm = (built_apps[COUNTER] / "app.wasm").read_bytes()

    sid = appd.launch(COUNTER)
    appd.request(protocol.TerminateApp(session_id=sid))
    appd.wait_state(sid, SessionState.STOPPED)
    assert sorted((cache_dir / "components").iterdir()) == [keys.artifact_path(wasm, GOOD_ROOT_HASH)]

    # Another image (a tampered tree re-signed, or any other root hash) never reuses that artifact,
    # even with byte-identical wasm: it gets its own, compiled from what its own mount holds.
    wait_for(lambda: mountd.count("unmounted", COUNTER) == 1, what="unmounted")
    mountd.images[COUNTER].root_hash = "d4" * 32
    sid = appd.launch(COUNTER)
    assert appd.roundtrip(sid, "increment") == '{"count":1}'
    assert sorted((cache_dir / "components").iterdir()) == sorted(
        [keys.artifact_path(wasm, GOOD_ROOT_HASH), keys.artifact_path(wasm, "d4" * 32)])
