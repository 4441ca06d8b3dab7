#!/usr/bin/env python3
"""Launch latency and IPC throughput of the app platform, measured end to end through appd.

Starts its own weft-appd in a throw-away environment with the counter app installed, then:
- launch: LAUNCH_APP → APP_READY over a control WebSocket, `--launches` times (after one
  warm-up launch that fills the compile cache), each session terminated before the next;
- IPC: `increment` round trips UI → appd → Wasm → appd → UI over a WebSocket bound to the
  session (what an app page uses), with up to `--window` messages in flight.
Prints one JSON line: {"launch_ms": {"p50", "p95", "n"}, "ipc_roundtrips_per_s"}.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_examples import EXAMPLES, build_package

COUNTER = "org.weft.demo.counter"


async def _until(ws: ClientConnection, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    while True:
        message = json.loads(await ws.recv())
        if predicate(message):
            return message


async def _launch(ws: ClientConnection) -> tuple[int, float]:
    started = time.perf_counter()
    await ws.send(json.dumps({"type": "LAUNCH_APP", "app_id": COUNTER, "surface_id": 0}))
    ack = await _until(ws, lambda m: m["type"] in ("LAUNCH_ACK", "ERROR"))
    if ack["type"] == "ERROR":
        raise SystemExit(f"error: launch failed: {ack['message']}")
    sid = ack["session_id"]
    await _until(ws, lambda m: m["type"] == "APP_READY" and m["session_id"] == sid)
    return sid, (time.perf_counter() - started) * 1000


async def _terminate(ws: ClientConnection, sid: int) -> None:
    await ws.send(json.dumps({"type": "TERMINATE_APP", "session_id": sid}))
    await _until(ws, lambda m: m == {"type": "APP_STATE", "session_id": sid, "state": "stopped"})


async def _ipc_rate(url: str, sid: int, count: int, window: int) -> float:
    async with connect(url) as page:
        in_flight = asyncio.Semaphore(window)

        async def send_all() -> None:
            message = json.dumps({"type": "IPC_FORWARD", "session_id": sid, "payload": "increment"})
            for _ in range(count):
                await in_flight.acquire()
                await page.send(message)

        started = time.perf_counter()
        sender = asyncio.create_task(send_all())
        received = 0
        while received < count:
            message = json.loads(await page.recv())
            if message["type"] == "IPC_MESSAGE":
                received += 1
                in_flight.release()
            elif message["type"] == "ERROR":
                raise SystemExit(f"error: IPC failed: {message['message']}")
        elapsed = time.perf_counter() - started
        await sender
        if json.loads(message["payload"]) != {"count": count}:
            raise SystemExit(f"error: counter ended at {message['payload']}, expected {count}")
        return count / elapsed


async def _measure(port: int, token: str, launches: int, ipc_count: int, window: int) -> dict:
    base = f"ws://127.0.0.1:{port}/appd?token="
    async with connect(base + token) as control:
        sid, _ = await _launch(control)  # warm-up: compile cache, standby pool
        await _terminate(control, sid)
        times = []
        for _ in range(launches):
            await asyncio.sleep(0.3)  # let the pool start the replacement runtime, as between user clicks
            sid, elapsed = await _launch(control)
            times.append(elapsed)
            await _terminate(control, sid)
        sid, _ = await _launch(control)
        await control.send(json.dumps({"type": "QUERY_SESSION_TOKEN", "session_id": sid}))
        session_token = (await _until(control, lambda m: m["type"] == "SESSION_TOKEN"))["token"]
        rate = await _ipc_rate(base + session_token, sid, ipc_count, window)
        await _terminate(control, sid)
    times.sort()
    return {"launch_ms": {"p50": round(statistics.median(times), 1),
                          "p95": round(times[min(len(times) - 1, round(0.95 * (len(times) - 1)))], 1),
                          "n": len(times)},
            "ipc_roundtrips_per_s": round(rate)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=30)
    parser.add_argument("--ipc", type=int, default=20000, help="IPC round trips to time")
    parser.add_argument("--window", type=int, default=64, help="IPC messages in flight")
    args = parser.parse_args()
    if args.launches < 1 or args.ipc < 1 or args.window < 1:
        parser.error("--launches, --ipc and --window must be positive")

    with tempfile.TemporaryDirectory(prefix="weft-bench-") as tmp:
        root = Path(tmp)
        runtime_dir = root / "xdg"
        runtime_dir.mkdir(mode=0o700)
        build_package(EXAMPLES[0], root / "store")
        env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir), "WEFT_APP_STORE": str(root / "store"),
               "WEFT_APP_DATA": str(root / "data"), "WEFT_CACHE_DIR": str(root / "cache"),
               "WEFT_APPD_WS_PORT": "0", "WEFT_APP_CGROUPS": "off",
               "WEFT_APP_SOURCE": "directory"}
        appd = subprocess.Popen([sys.executable, "-m", "weft.daemons.appd"], env=env, stderr=subprocess.DEVNULL)
        try:
            wsport = runtime_dir / "weft/appd.wsport"
            deadline = time.monotonic() + 30
            while not wsport.exists():
                if appd.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("error: weft-appd did not start")
                time.sleep(0.02)
            token = (runtime_dir / "weft/appd.token").read_text()
            result = asyncio.run(_measure(int(wsport.read_text()), token, args.launches, args.ipc, args.window))
        finally:
            appd.send_signal(signal.SIGTERM)
            appd.wait(30)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
