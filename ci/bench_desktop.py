#!/usr/bin/env python3
"""What the desktop costs: prints one JSON line

  {"boot_to_ui_s", "first_boot_to_ui_s", "click_to_window_s", "launch_to_mapped_ms": {"p50", "p95", "n"},
   "frame_ms": {"p50", "p95", "frames", "windows"},
   "rss_mb": {"compositor", "shell", "app_shell", "standby_app_shell", "total"},
   "image_bytes", "image_zst_bytes", "targets", "accel"}

Two parts (progress on stderr):
- host (always): weft-compositor on the headless backend at 1280x800 with the real weft-shell and
  weft-app-shell, and a weft-appd (directory packages, the counter built from examples/) linked to
  it. launch_to_mapped: LAUNCH_APP -> the compositor's surface_ready for that session (appd logs
  `session N: window mapped`), `--launches` times after one warm-up, each session closed before
  the next. frame_ms: with 5 counter windows open and the top one repainting (20 increments/s),
  the compositor's render time per frame (its SIGUSR1 `frame time` report). rss_mb: resident
  memory of the compositor, the shell (with its WebKit processes), one app shell (with its
  WebKit processes) and the standby app shell kept started for the next launch, with one app open.
  The compositor runs as the image's unit does, with --app-shell-standby: a launch hands its
  session to the app shell started ahead (1 s between launches, as between clicks); --cold runs
  it without, so that every launch starts its app shell (standby_app_shell is then 0).
- VM (unless --no-vm): boots the test image (`weft image build --profile test` first) with
  Secure Boot firmware, as the product runs, and reads the screen with OCR: first_boot_to_ui_s is
  QEMU start -> "Counter" read from the launcher on a fresh disk (with the key enrollment's reset
  and the partitions made on first boot); boot_to_ui_s the same on the next boot of that disk;
  click_to_window_s is the click on Counter -> the app's "Reset" button read on the screen
  (OCR polls every ~1-2 s, so both carry that resolution). Image sizes: the raw image and its
  `zstd -T0` (level 3) size.
Targets (issue 9): boot to UI <= 75 s under TCG; launch -> mapped p50 <= 400 ms; frame time
<= 16 ms at 1280x800 on pixman; zstd image <= 350 MB.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "ci"))

from build_examples import EXAMPLES, build_package  # noqa: E402

from weft.image.profiles import image_path  # noqa: E402
from weft.vm.accel import detect_accel  # noqa: E402
from weft.vm.machine import Machine  # noqa: E402
from weft.vm.run import accel_cache_file  # noqa: E402

COUNTER = "org.weft.demo.counter"
SIZE = "1280x800"
MAPPED = re.compile(r"session (\d+): window mapped")
STANDBY_STARTED = re.compile(r"standby app shell started: .* \(pid (\d+)\)")
STANDBY_READY = re.compile(r"weft-app-shell\[standby\] INFO ready")
FRAME_TIME = re.compile(r"frame time: p50 ([\d.]+) ms p95 ([\d.]+) ms max [\d.]+ ms over (\d+) frames, windows (\d+)")
TARGETS = {"boot_to_ui_s": 75, "launch_to_mapped_p50_ms": 400, "frame_p50_ms": 16, "image_zst_mb": 350}
VENV_BIN = Path(sys.executable).parent


def progress(message: str) -> None:
    print(f"bench_desktop: {message}", file=sys.stderr, flush=True)


class LogWatch:
    """Lines of a child's stderr, each with the monotonic time it arrived."""

    def __init__(self, stream: Any, name: str, keep: Path):
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._keep = keep.open("w")
        threading.Thread(target=self._read, args=(stream,), name=name, daemon=True).start()

    def _read(self, stream: Any) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            with self._lock:
                self.lines.append((time.monotonic(), line))
            self._keep.write(line + "\n")
            self._keep.flush()

    def wait_for(self, pattern: re.Pattern[str], timeout: float, after: float = 0.0) -> tuple[float, re.Match[str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for when, line in self.lines:
                    match = pattern.search(line)
                    if when >= after and match:
                        return when, match
            time.sleep(0.01)
        raise SystemExit(f"error: no log line /{pattern.pattern}/ within {timeout:g} s")


def _descendants(pid: int) -> list[int]:
    """`pid` first, then every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _rss_mb(pids: list[int]) -> float:
    total_kb = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        total_kb += int(match.group(1)) if match else 0
    return round(total_kb / 1024, 1)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


async def _until(ws: ClientConnection, predicate: Any) -> dict[str, Any]:
    while True:
        message = json.loads(await ws.recv())
        if predicate(message):
            return message


async def _launch(ws: ClientConnection, launched: set[int]) -> tuple[int, float]:
    """A control connection gets LAUNCH_ACK twice (reply and broadcast): the ack of this launch
    is the first one naming a session not seen before."""
    started = time.monotonic()
    await ws.send(json.dumps({"type": "LAUNCH_APP", "app_id": COUNTER}))
    ack = await _until(ws, lambda m: m["type"] == "ERROR"
                       or (m["type"] == "LAUNCH_ACK" and m["session_id"] not in launched))
    if ack["type"] == "ERROR":
        raise SystemExit(f"error: launch failed: {ack['message']}")
    launched.add(int(ack["session_id"]))
    return int(ack["session_id"]), started


async def _terminate(ws: ClientConnection, sid: int) -> None:
    await ws.send(json.dumps({"type": "TERMINATE_APP", "session_id": sid}))
    await _until(ws, lambda m: m.get("type") == "APP_STATE" and m.get("session_id") == sid
                 and m.get("state") == "stopped")


async def _host_measure(url: str, appd_log: LogWatch, compositor: subprocess.Popen[bytes], comp_log: LogWatch,
                        launches: int, standby: bool) -> dict[str, Any]:
    async with connect(url) as control:
        launched: set[int] = set()
        times: list[float] = []
        for round_number in range(launches + 1):
            await asyncio.sleep(1.0)  # the pool's standby runtime, as between clicks
            sid, started = await _launch(control, launched)
            mapped_at, _ = await asyncio.to_thread(
                appd_log.wait_for, re.compile(rf"session {sid}: window mapped"), 120, started)
            if round_number > 0:  # the first launch warms the compile cache and WebKit's files
                times.append((mapped_at - started) * 1000)
            progress(f"launch {round_number}: mapped after {(mapped_at - started) * 1000:.0f} ms")
            if round_number < launches:
                await _terminate(control, sid)
        # `sid` stays open: its app shell (pid from the compositor's log) for the RSS figure, and
        # the standby app shell started ahead for the next launch, which costs memory too.
        def logged_pids(pattern: str) -> list[int]:
            return [int(m.group(1)) for _, line in list(comp_log.lines) if (m := re.search(pattern, line))]

        await asyncio.sleep(5)  # the page is loaded: its web process has grown to its working size
        app_shell = logged_pids(rf"app shell for session {sid} \(.*\)(?: started|: the standby one), pid (\d+)")[-1]
        standby_mb = 0.0
        if standby:
            _, standby_line = await asyncio.to_thread(comp_log.wait_for, STANDBY_STARTED, 30, mapped_at)
            await asyncio.to_thread(comp_log.wait_for, STANDBY_READY, 30, mapped_at)
            standby_mb = _rss_mb(_descendants(int(standby_line.group(1))))
        shells = [p for p in _descendants(compositor.pid)[1:] if "weft-shell" in _cmdline(p)
                  or "weft.daemons.shell" in _cmdline(p)]
        if len(shells) != 1:
            raise SystemExit(f"error: expected one shell process, found {shells}")
        app_mb, shell_mb = _rss_mb(_descendants(app_shell)), _rss_mb(_descendants(shells[0]))
        compositor_mb = _rss_mb([compositor.pid])
        rss = {"compositor": compositor_mb, "shell": shell_mb, "app_shell": app_mb, "standby_app_shell": standby_mb,
               "total": round(compositor_mb + shell_mb + app_mb + standby_mb, 1)}

        # Five windows, the top one repainting.
        open_sessions = [sid]
        for _ in range(4):
            new_sid, started = await _launch(control, launched)
            await asyncio.to_thread(appd_log.wait_for, re.compile(rf"session {new_sid}: window mapped"), 120, started)
            open_sessions.append(new_sid)
        await control.send(json.dumps({"type": "QUERY_SESSION_TOKEN", "session_id": open_sessions[-1]}))
        token = (await _until(control, lambda m: m["type"] == "SESSION_TOKEN"))["token"]
        base = url.split("?")[0]
        async with connect(f"{base}?token={token}") as page:
            for _ in range(200):  # 10 s at 20 repaints/s
                await page.send(json.dumps({"type": "IPC_FORWARD", "session_id": open_sessions[-1],
                                            "payload": "increment"}))
                await asyncio.sleep(0.05)
        asked = time.monotonic()
        compositor.send_signal(signal.SIGUSR1)
        _, frame = await asyncio.to_thread(comp_log.wait_for, FRAME_TIME, 10, asked)
        for open_sid in open_sessions:
            await _terminate(control, open_sid)
    times.sort()
    return {"launch_to_mapped_ms": {"p50": round(statistics.median(times), 1),
                                    "p95": round(times[min(len(times) - 1, round(0.95 * (len(times) - 1)))], 1),
                                    "n": len(times)},
            "frame_ms": {"p50": float(frame.group(1)), "p95": float(frame.group(2)), "frames": int(frame.group(3)),
                         "windows": int(frame.group(4))},
            "rss_mb": rss}


def _wait_file(path: Path, process: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"error: {what} did not start (see {path.parent})")
        time.sleep(0.05)


def host_part(launches: int, logs: Path, standby: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="weft-bench-desktop-") as tmp:
        root = Path(tmp)
        comp_rt, appd_rt = root / "compositor", root / "appd"
        for directory in (comp_rt, appd_rt):
            directory.mkdir(mode=0o700)
        progress("building the counter package")
        build_package(EXAMPLES[0], root / "store")
        common = {**os.environ, "WEFT_APP_STORE": str(root / "store"), "WEFT_APP_SOURCE": "directory",
                  "WEFT_APP_DATA": str(root / "data"), "WEFT_CACHE_DIR": str(root / "cache"),
                  "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
        comp_socket = comp_rt / "compositor.sock"
        compositor = subprocess.Popen(
            [VENV_BIN / "weft-compositor", "--backend", "headless", "--size", SIZE, "--ipc-socket", comp_socket,
             "--shell", "weft-shell", "--app-shell", "weft-app-shell", *(["--app-shell-standby"] if standby else [])],
            env={**common, "XDG_RUNTIME_DIR": str(comp_rt), "WEFT_APPD_RUNTIME_DIR": str(appd_rt),
                 "WLR_RENDERER": "pixman", "WEBKIT_DISABLE_COMPOSITING_MODE": "1"},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        comp_log = LogWatch(compositor.stderr, "compositor-log", logs / "bench-desktop-compositor.log")
        appd: subprocess.Popen[bytes] | None = None
        try:
            _wait_file(comp_socket, compositor, "weft-compositor")
            appd = subprocess.Popen(
                [sys.executable, "-m", "weft.daemons.appd"],
                env={**common, "XDG_RUNTIME_DIR": str(appd_rt), "WEFT_APPD_WS_PORT": "0", "WEFT_APP_CGROUPS": "off",
                     "WEFT_COMPOSITOR_SOCKET": str(comp_socket)},
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            appd_log = LogWatch(appd.stderr, "appd-log", logs / "bench-desktop-appd.log")
            wsport = appd_rt / "weft/appd.wsport"
            _wait_file(wsport, appd, "weft-appd")
            token = (appd_rt / "weft/appd.token").read_text()
            url = f"ws://127.0.0.1:{int(wsport.read_text())}/appd?token={token}"
            return asyncio.run(_host_measure(url, appd_log, compositor, comp_log, launches, standby))
        finally:
            for process in (appd, compositor):
                if process is not None and process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(30)
                    except subprocess.TimeoutExpired:
                        process.kill()


def vm_part(image: Path, logs: Path) -> dict[str, Any]:
    accel = detect_accel(accel_cache_file())
    # As the product boots: Secure Boot firmware. The first boot of a fresh disk also enrolls the
    # key (one more reset) and grows/creates its partitions; a normal boot is the second one.
    first = Machine(image, logs, accel, name="bench-desktop", secure_boot=True)
    first.config.disk.unlink(missing_ok=True)  # an earlier run's disk: this boot must be a first one
    with first as machine:
        progress("first boot of a fresh disk (key enrollment, partitions made); waiting for the launcher")
        machine.wait_for_text(r"Counter", timeout=900)
        first_boot_to_ui = time.monotonic() - machine.started_at
        progress(f"system UI read after {first_boot_to_ui:.1f} s")
        machine.wait_for_shell(300)
        machine.shutdown()
    with Machine(image, logs, accel, name="bench-desktop", secure_boot=True) as machine:
        progress("booting the same disk again; waiting for the launcher on screen")
        machine.wait_for_text(r"Counter", timeout=900)
        boot_to_ui = time.monotonic() - machine.started_at
        progress(f"system UI read after {boot_to_ui:.1f} s")
        machine.wait_for_shell(300)
        clicked = time.monotonic()
        machine.click_word("Counter", timeout=60)
        machine.find_word("Reset", timeout=600)
        click_to_window = time.monotonic() - clicked
        progress(f"Counter's window read {click_to_window:.1f} s after the click")
        machine.shutdown()
    raw = image.stat().st_size
    with image.open("rb") as source:
        zst = subprocess.run(["zstd", "-T0", "-c"], stdin=source, stdout=subprocess.PIPE, check=True).stdout
    return {"boot_to_ui_s": round(boot_to_ui, 1), "first_boot_to_ui_s": round(first_boot_to_ui, 1),
            "click_to_window_s": round(click_to_window, 1),
            "image_bytes": raw, "image_zst_bytes": len(zst), "accel": accel}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=10, help="timed launches on the host (after one warm-up)")
    parser.add_argument("--no-vm", action="store_true", help="only the host part")
    parser.add_argument("--cold", action="store_true",
                        help="host part without --app-shell-standby: every launch starts its app shell (the "
                             "figure before the standby app shell)")
    parser.add_argument("--image", type=Path, default=image_path(REPO, "test"))
    args = parser.parse_args()
    if args.launches < 1:
        parser.error("--launches must be positive")
    if not args.no_vm and not args.image.is_file():
        parser.error(f"{args.image} does not exist (build it with: weft image build --profile test)")
    logs = REPO / "test-artifacts" / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = host_part(args.launches, logs, standby=not args.cold)
    if not args.no_vm:
        result.update(vm_part(args.image, logs))
    result["targets"] = TARGETS
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
