"""Where windows go: the panel covers the output, apps get the work area above the taskbar."""
from __future__ import annotations

from typing import NamedTuple

TASKBAR_HEIGHT = 48  # px at the bottom of the output, drawn by the shell; apps never cover it


class Rect(NamedTuple):
    x: int
    y: int
    width: int
    height: int


def panel_rect(output: Rect) -> Rect:
    return output


def work_area(output: Rect) -> Rect:
    return Rect(output.x, output.y, output.width, max(1, output.height - TASKBAR_HEIGHT))
