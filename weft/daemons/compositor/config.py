"""weft-compositor's configuration: parsed once from the command line and settings, then passed down."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BackendName = Literal["auto", "drm", "headless", "wayland", "x11"]
BACKENDS: tuple[BackendName, ...] = ("auto", "drm", "headless", "wayland", "x11")
DEFAULT_SIZE = (1280, 800)
# WLR_BACKENDS for each choice ("auto": nested under a running display, else DRM on a seat)
WLR_BACKENDS = {"drm": "drm,libinput", "headless": "headless", "wayland": "wayland", "x11": "x11"}


@dataclass(frozen=True)
class CompositorConfig:
    backend: BackendName
    size: tuple[int, int]
    shell: tuple[str, ...]
    app_shell: tuple[str, ...]
    app_shell_standby: bool  # keep one `app_shell --standby` started ahead (standby.py)
    ipc_socket: Path
    appd_cgroup: str | None
    test_input: bool
    debug: bool


def resolve_backend(choice: BackendName, env: dict[str, str] | None) -> BackendName:
    if choice != "auto":
        return choice
    env = env or {}
    if env.get("WAYLAND_DISPLAY"):
        return "wayland"
    if env.get("DISPLAY"):
        return "x11"
    return "drm"


def parse_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise ValueError(f"{text!r} is not WIDTHxHEIGHT")
    size = int(width), int(height)
    if not (320 <= size[0] <= 16384 and 240 <= size[1] <= 16384):
        raise ValueError(f"{text!r}: each side must be 320..16384 (width) / 240..16384 (height)")
    return size
