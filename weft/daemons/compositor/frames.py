"""Render time per frame (scene → output commit), for --debug logs and SIGUSR1 reports.

ci/bench_desktop.py reads the `frame time` lines: p50/p95 over the last FRAME_WINDOW frames.
The line ends with the totals since start: frames rendered, and frame events skipped because
nothing had changed (see Compositor._frame).
"""
from __future__ import annotations

import collections
import statistics

FRAME_WINDOW = 600


class FrameTimes:
    def __init__(self) -> None:
        self.samples_ms: collections.deque[float] = collections.deque(maxlen=FRAME_WINDOW)
        self.count = 0
        self.skipped = 0

    def add(self, milliseconds: float) -> None:
        self.samples_ms.append(milliseconds)
        self.count += 1

    def skip(self) -> None:
        self.skipped += 1

    def summary(self, windows: int) -> str:
        totals = f"; since start {self.count} rendered, {self.skipped} skipped"
        if len(self.samples_ms) < 2:
            return f"frame time: {len(self.samples_ms)} frames, windows {windows}{totals}"
        cuts = statistics.quantiles(self.samples_ms, n=20, method="inclusive")
        return (f"frame time: p50 {statistics.median(self.samples_ms):.2f} ms p95 {cuts[18]:.2f} ms "
                f"max {max(self.samples_ms):.2f} ms over {len(self.samples_ms)} frames, windows {windows}{totals}")
