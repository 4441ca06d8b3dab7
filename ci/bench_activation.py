#!/usr/bin/env python3
"""What launching from a verified image costs, measured in the booted test image: prints one JSON line

  {"verified_fresh_ms", "verified_reused_ms", "directory_ms": {"p50", "p95", "n", "ack_p50"},
   "fresh_added_p50_ms", "fresh_vs_directory_p50", "reused_vs_directory_p50", "targets", "accel"}

Boots its own VM from the test image (`weft image build --profile test` first) and times
LAUNCH_APP -> APP_READY of the shipped counter app inside the guest (a WebSocket client run by
the weft user, so the test console's latency is not in the figures), three ways:
- verified_fresh: the image's weft-appd; each launch mounts the image (the previous session was
  stopped, so its last reference unmounted it);
- verified_reused: the same appd while another session of the counter holds the mount;
- directory: a second appd in the same boot, in the developer setting (WEFT_APP_SOURCE=directory):
  a copy of the image's unit (same hardening, delegated cgroup, pool) with its own runtime
  directory and port, given the very package the image holds (copied out of its mount) as its
  system package store.
The three alternate launch by launch, so a slower or faster stretch of the (shared, TCG) host
hits all three alike. Before each launch the guest settles: udev idle, and both appds' standby
runtimes started and idle (a launch otherwise measures a runtime still importing wasmtime). Two
rounds are not counted (weft-mountd's socket-activated start, the compile cache). `ack_p50` is
LAUNCH_APP -> LAUNCH_ACK: appd answers once it has the package, for an image once weft-mountd
has mounted it. Targets (issue 8): a fresh mount adds <= 150 ms p50 to the directory launch; a
reused mount is within 1.2x of it. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from weft.image.profiles import image_path  # noqa: E402
from weft.vm.accel import detect_accel  # noqa: E402
from weft.vm.machine import Machine  # noqa: E402
from weft.vm.run import accel_cache_file  # noqa: E402
from weft.vm.transfer import push  # noqa: E402

BOOT_TIMEOUT_S = 900
APPD = "weft-appd.service"
DIRECTORY_APPD = "weft-appd-directory.service"
AS_WEFT = "runuser -u weft -- env HOME=/var/lib/weft"
PYTHON = "/usr/lib/weft/venv/bin/python"
GUEST_SCRIPT = "/tmp/bench_activation_guest.py"
BENCH_STORE = "/var/lib/weft/bench-apps"  # the directory package, as the second appd's system package store
DIRECTORY_PORT = 7411
FRESH_ADDED_TARGET_MS = 150
REUSED_RATIO_TARGET = 1.2

# Runs in the guest as the weft user. `copy N`: copy the mounted counter package to BENCH_STORE.
# `measure N`: N counted rounds (after WARM_UP), each a fresh, a directory and a reused launch;
# prints {"fresh"|"reused"|"directory": {"ms": [...], "ack_ms": [...]}}.
GUEST_SOURCE = r'''
import asyncio, json, os, shutil, subprocess, sys, time
from websockets.asyncio.client import connect

APP = "org.weft.demo.counter"
MOUNT = f"/run/weft/apps/{APP}"
APPDS = {"verified": ("weft-appd.service", "/run/weft-appd"),
         "directory": ("weft-appd-directory.service", "/run/weft-appd-directory")}
STORE = "/var/lib/weft/bench-apps"
POOL = 2  # WEFT_RUNTIME_POOL's default
WARM_UP = 2


def log(message):
    print(f"guest: {message}", file=sys.stderr, flush=True)


def standby():
    """(standby runtimes, their CPU time in µs) over both appds."""
    procs = usage = 0
    for unit, _ in APPDS.values():
        cgroup = f"/sys/fs/cgroup/system.slice/{unit}/standby"
        with open(f"{cgroup}/cgroup.procs") as fh:
            procs += len(fh.read().split())
        with open(f"{cgroup}/cpu.stat") as fh:
            usage += int(fh.readline().split()[1])
    return procs, usage


def settle():
    """udev done with the last tear-down, and both standby pools full and idle."""
    subprocess.run(["udevadm", "settle", "--timeout=30"], check=False)
    deadline = time.monotonic() + 120
    quiet = 0
    procs, usage = standby()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now_procs, now_usage = standby()
        busy = now_usage - usage > 5_000  # more than 2 % of a CPU
        procs, usage = now_procs, now_usage
        quiet = 0 if busy or procs < POOL * len(APPDS) else quiet + 1
        if quiet >= 4:
            return
    raise SystemExit("error: the standby runtimes did not settle within 120 s")


async def until(ws, predicate):
    while True:
        message = json.loads(await ws.recv())
        if predicate(message):
            return message


async def launch(ws):
    started = time.perf_counter()
    await ws.send(json.dumps({"type": "LAUNCH_APP", "app_id": APP, "surface_id": 0}))
    ack = await until(ws, lambda m: m["type"] in ("LAUNCH_ACK", "ERROR"))
    if ack["type"] == "ERROR":
        raise SystemExit(f"error: launch failed: {ack.get('reason')}: {ack['message']}")
    sid, acked = ack["session_id"], time.perf_counter()
    state = await until(ws, lambda m: m.get("session_id") == sid and (
        m["type"] == "APP_READY" or (m["type"] == "APP_STATE" and m["state"] == "stopped")))
    if state["type"] != "APP_READY":
        raise SystemExit(f"error: session {sid} ended before READY: {state}")
    return sid, (acked - started) * 1000, (time.perf_counter() - started) * 1000


async def terminate(ws, sid):
    await ws.send(json.dumps({"type": "TERMINATE_APP", "session_id": sid}))
    await until(ws, lambda m: m["type"] == "APP_STATE" and m["session_id"] == sid and m["state"] == "stopped")


def url(kind):
    runtime = APPDS[kind][1] + "/weft"
    with open(f"{runtime}/appd.token") as fh:
        token = fh.read().strip()
    with open(f"{runtime}/appd.wsport") as fh:
        port = int(fh.read())
    return f"ws://127.0.0.1:{port}/appd?token={token}"


def expect_mounted(mounted, before):
    if os.path.ismount(MOUNT) != mounted:
        raise SystemExit(f"error: {MOUNT} is {'not ' if mounted else 'still '}mounted before a {before} launch")


async def copy():
    async with connect(url("verified"), max_size=None) as ws:
        sid, _, _ = await launch(ws)
        shutil.rmtree(f"{STORE}/{APP}", ignore_errors=True)
        shutil.copytree(MOUNT, f"{STORE}/{APP}")
        await terminate(ws, sid)
    print(json.dumps({"copied": f"{STORE}/{APP}"}))


async def measure(n):
    results = {kind: {"ms": [], "ack_ms": []} for kind in ("fresh", "reused", "directory")}

    def record(kind, i, ack_ms, ms):
        if i >= WARM_UP:
            results[kind]["ms"].append(ms)
            results[kind]["ack_ms"].append(ack_ms)
            log(f"{i - WARM_UP + 1}/{n} {kind}: {ms:.1f} ms (LAUNCH_ACK after {ack_ms:.1f} ms)")

    async with connect(url("verified"), max_size=None) as verified, \
            connect(url("directory"), max_size=None) as directory:
        for i in range(WARM_UP + n):
            settle()
            expect_mounted(False, "fresh")
            sid, ack_ms, ms = await launch(verified)
            await terminate(verified, sid)
            record("fresh", i, ack_ms, ms)

            settle()
            sid, ack_ms, ms = await launch(directory)
            await terminate(directory, sid)
            record("directory", i, ack_ms, ms)

            holder, _, _ = await launch(verified)
            settle()
            expect_mounted(True, "reused")
            sid, ack_ms, ms = await launch(verified)
            await terminate(verified, sid)
            await terminate(verified, holder)
            record("reused", i, ack_ms, ms)
    print(json.dumps(results))


asyncio.run(copy() if sys.argv[1] == "copy" else measure(int(sys.argv[2])))
'''


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return (ordered[(len(ordered) - 1) // 2] + ordered[len(ordered) // 2]) / 2


def summary(series: dict[str, list[float]]) -> dict[str, float | int]:
    """p50/p95 of LAUNCH_APP -> APP_READY, and the p50 of its first part, LAUNCH_APP -> LAUNCH_ACK
    (appd answers once the package is acquired, i.e. for an image once weft-mountd has mounted it)."""
    ordered = sorted(series["ms"])
    n = len(ordered)
    p95 = ordered[min(n - 1, round(0.95 * (n - 1)))]  # as ci/bench_launch.py
    return {"p50": round(_median(ordered), 1), "p95": round(p95, 1), "n": n,
            "ack_p50": round(_median(series["ack_ms"]), 1)}


def guest_script(machine: Machine, args: str) -> dict[str, dict[str, list[float]]]:
    output = machine.succeed(f"{AS_WEFT} XDG_RUNTIME_DIR=/run/weft-appd {PYTHON} {GUEST_SCRIPT} {args} "
                             "2>>/tmp/bench-activation.log", timeout=3600)
    result: dict[str, dict[str, list[float]]] = json.loads(output.strip().splitlines()[-1])
    return result


def directory_unit(image_unit: str) -> str:
    """The image's weft-appd unit, made into a second appd that runs package directories."""
    replacements = [("RuntimeDirectory=weft-appd\n", "RuntimeDirectory=weft-appd-directory\n"),
                    ("XDG_RUNTIME_DIR=/run/weft-appd\n", "XDG_RUNTIME_DIR=/run/weft-appd-directory\n"),
                    ("WEFT_APP_SOURCE=verified\n", "WEFT_APP_SOURCE=directory\n"),
                    (f"/sys/fs/cgroup/system.slice/{APPD}", f"/sys/fs/cgroup/system.slice/{DIRECTORY_APPD}"),
                    ("\n[Service]\n", f"\n[Service]\nEnvironment=WEFT_APPD_WS_PORT={DIRECTORY_PORT} "
                                       f"WEFT_SYSTEM_APP_STORE={BENCH_STORE}\n")]
    unit = image_unit.split("\n[Install]")[0]
    for old, new in replacements:
        if unit.count(old) != 1:
            raise SystemExit(f"error: cannot derive {DIRECTORY_APPD}: {old!r} is not in {APPD} exactly once")
        unit = unit.replace(old, new)
    return unit


def measure(machine: Machine, n: int) -> dict[str, dict[str, list[float]]]:
    machine.wait_for_shell(BOOT_TIMEOUT_S)
    machine.wait_for_unit(APPD, timeout=BOOT_TIMEOUT_S)
    machine.execute("systemctl is-system-running --wait", timeout=600)  # boot jobs done (may say degraded)
    push(machine, GUEST_SOURCE.encode(), GUEST_SCRIPT)
    machine.succeed(f"chmod 0644 {GUEST_SCRIPT} && install -d -o weft -g weft -m 0750 {BENCH_STORE}")
    say("copying the counter package out of its mount")
    guest_script(machine, "copy")
    unit = directory_unit(machine.succeed(f"cat /usr/lib/systemd/system/{APPD}"))
    push(machine, unit.encode(), f"/run/systemd/system/{DIRECTORY_APPD}")
    machine.succeed(f"systemctl daemon-reload && systemctl start {DIRECTORY_APPD}", timeout=300)
    machine.wait_for_unit(DIRECTORY_APPD, timeout=300)
    say(f"{n} rounds of fresh, directory and reused launches")
    try:
        return guest_script(machine, f"measure {n}")
    finally:
        say("guest log:\n" + machine.execute("cat /tmp/bench-activation.log", timeout=60)[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=15, help="counted launches per series (at least 10)")
    parser.add_argument("--image", type=Path, default=image_path(REPO, "test"))
    args = parser.parse_args()
    if args.launches < 10:
        parser.error("--launches must be at least 10")
    if not args.image.is_file():
        raise SystemExit(f"error: test image {args.image} is missing; build it with: weft image build --profile test")
    accel = detect_accel(accel_cache_file())
    with (tempfile.TemporaryDirectory(prefix="weft-bench-activation-") as tmp,
          Machine(args.image, Path(tmp), accel, name="bench-activation") as machine):
        say(f"booting {args.image} ({accel})")
        times = measure(machine, args.launches)
        machine.shutdown()
    fresh, reused, directory = (summary(times[k]) for k in ("fresh", "reused", "directory"))
    added = round(fresh["p50"] - directory["p50"], 1)
    reused_ratio = round(reused["p50"] / directory["p50"], 2)
    print(json.dumps({
        "verified_fresh_ms": fresh, "verified_reused_ms": reused, "directory_ms": directory,
        "fresh_added_p50_ms": added,
        "fresh_vs_directory_p50": round(fresh["p50"] / directory["p50"], 2),
        "reused_vs_directory_p50": reused_ratio,
        "targets": {"fresh_added_p50_le_150_ms": added <= FRESH_ADDED_TARGET_MS,
                    "reused_within_1_2x": reused_ratio <= REUSED_RATIO_TARGET},
        "accel": accel,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
