#!/usr/bin/env python3
"""Benchmark: `weft-verity format` against `veritysetup format`, and `weft-pack build-image`.

Hashes the same file (256 MiB by default) with both tools, alternating, and prints one JSON
object on stdout:

  {"bytes", "weft_s", "veritysetup_s", "ratio",            # ratio = weft_s / veritysetup_s
   "identical", "rounds", "statistic", "load_avg",
   "build_image_bytes", "build_image_s"}                    # build-image of a 50 MiB package

Times are wall-clock seconds of the whole command (process start-up included), the minimum
over `--rounds` alternating runs with a warm page cache, which is the least noisy figure on
a shared machine. Targets: ratio <= 1.0, build_image_s < 3.
Run: .venv/bin/python ci/bench_verity.py [--mib 256] [--rounds 5] [--dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SALT = "5a" * 32
UUID = "6f1d5b2e-0c3a-4b7e-9a51-2d8c0f4e7a10"
CHUNK = 8 << 20


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        for done in range(0, size, CHUNK):
            fh.write(os.urandom(min(CHUNK, size - done)))


def timed(argv: list[str], **kwargs) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)
    return time.perf_counter() - start


def bench_verity(work: Path, size: int, rounds: int) -> dict:
    data = work / "data.img"
    write_random(data, size)
    data.read_bytes()  # warm the page cache for both tools alike
    ours, theirs = work / "weft.hash", work / "veritysetup.hash"
    weft_cmd = [sys.executable, "-m", "weft.verity.cli", "format", str(data), str(ours),
                f"--salt={SALT}", f"--uuid={UUID}"]
    vs_cmd = ["veritysetup", "format", str(data), str(theirs), f"--salt={SALT}", f"--uuid={UUID}"]
    weft_times, vs_times = [], []
    for _ in range(rounds):
        weft_times.append(timed(weft_cmd))
        vs_times.append(timed(vs_cmd))
    return {"bytes": size, "weft_s": round(min(weft_times), 4), "veritysetup_s": round(min(vs_times), 4),
            "ratio": round(min(weft_times) / min(vs_times), 3),
            "identical": ours.read_bytes() == theirs.read_bytes(), "rounds": rounds, "statistic": "min"}


def bench_build_image(work: Path, size: int, rounds: int) -> dict:
    package = work / "pkg" / "com.example.bench"
    (package / "ui").mkdir(parents=True)
    (package / "wapp.toml").write_text('[package]\nid = "com.example.bench"\nname = "Bench"\n'
                                       'version = "1.0.0"\n[runtime]\nmodule = "app.wasm"\n'
                                       '[ui]\nentry = "ui/index.html"\n')
    (package / "app.wasm").write_bytes(b"\0asm\x0d\x00\x01\x00")
    (package / "ui" / "index.html").write_text("<h1>bench</h1>\n")
    (package / "assets").mkdir()
    for i in range(size // (1 << 20)):
        write_random(package / "assets" / f"blob{i:03}.bin", 1 << 20)
    pack = [sys.executable, "-m", "weft.pack.cli"]
    subprocess.run([*pack, "generate-key", str(work / "keys")], check=True, stdout=subprocess.DEVNULL)
    build = [*pack, "build-image", str(package), "--key", str(work / "keys" / "weft-sign.key"),
             "--out", str(work / "bench.wapp"), "--force"]
    times = [timed(build) for _ in range(rounds)]
    return {"build_image_bytes": size, "build_image_s": round(min(times), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="size of the hashed file (default 256)")
    parser.add_argument("--image-mib", type=int, default=50, help="package size for build-image (default 50)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="weft-bench-", dir=args.dir) as tmp:
        result = bench_verity(Path(tmp), args.mib << 20, args.rounds)
        result["load_avg"] = round(os.getloadavg()[0], 2)
        result.update(bench_build_image(Path(tmp), args.image_mib << 20, max(1, args.rounds // 2)))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
