"""The desktop on the host, for the shells' tests: a headless weft-compositor that starts the real
weft-shell and the app shells, a real weft-appd talking to it, and readers of what is shown
(the shells' `--debug` lines, screenshots through wlr-screencopy with grim, OCR with tesseract)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from platform_support import REPO, Appd, Env, wait_for

ARTIFACTS = REPO / "test-artifacts/shell"
PYTHON = sys.executable


def renamed_copy(package: Path, target: Path, app_id: str, name: str) -> Path:
    """A copy of `package` with another id and display name (a name may be any text, markup too)."""
    dest = target / app_id
    shutil.copytree(package, dest)
    manifest = (dest / "wapp.toml").read_text()
    manifest = re.sub(r'(?m)^id = ".*"$', f'id = "{app_id}"', manifest, count=1)
    manifest = re.sub(r'(?m)^name = ".*"$', f"name = {json.dumps(name)}", manifest, count=1)
    (dest / "wapp.toml").write_text(manifest)
    return dest


class Desktop:
    """weft-compositor (headless, 1280x800) with weft-shell, and weft-appd announcing windows to it."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.log = env.root / "desktop.log"
        self.ipc_socket = env.runtime_dir / "weft" / "compositor.sock"
        (env.runtime_dir / "weft").mkdir(mode=0o700, exist_ok=True)
        self.vars = {**env.vars, "WLR_BACKENDS": "headless", "WLR_RENDERER": "pixman", "WLR_LIBINPUT_NO_DEVICES": "1",
                     "PYTHONUNBUFFERED": "1"}
        with open(self.log, "ab") as log:
            self.compositor = subprocess.Popen(
                [PYTHON, "-m", "weft.daemons.compositor", "--backend", "headless", "--size", "1280x800",
                 "--ipc-socket", str(self.ipc_socket), "--debug",
                 "--shell", f"{PYTHON} -m weft.daemons.shell --debug",
                 "--app-shell", f"{PYTHON} -m weft.daemons.app_shell --debug", "--app-shell-standby"],
                env=self.vars, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        found = wait_for(lambda: self._display() or self.compositor.poll() is not None, 30, "the Wayland socket")
        assert self.compositor.poll() is None, self.text()
        self.wayland_display = str(found)
        self.appd = Appd(env, {"WEFT_COMPOSITOR_SOCKET": str(self.ipc_socket)})

    def _display(self) -> str | None:
        match = re.search(r"(?m)^WAYLAND_DISPLAY=(\S+)$", self.text())
        return match.group(1) if match else None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def shell_states(self) -> list[dict[str, Any]]:
        """Every state the system shell's page reported rendering (weft-shell --debug)."""
        return [json.loads(line.split("shell-state ", 1)[1]) for line in self.text().splitlines()
                if "shell-state " in line]

    def wait_shell_state(self, predicate: Any, timeout: float = 30.0, what: str = "shell state") -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((s for s in reversed(self.shell_states()) if predicate(s)), None)

        try:
            return wait_for(found, timeout, what)  # type: ignore[return-value]
        except AssertionError:
            raise AssertionError(f"timed out waiting for {what}; log:\n{self.text()[-6000:]}") from None

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        subprocess.run(["grim", str(path)], env={**self.vars, "WAYLAND_DISPLAY": self.wayland_display},
                       check=True, timeout=30)
        return path

    def stop(self) -> None:
        self.appd.stop(signal.SIGTERM)
        if self.compositor.poll() is None:
            self.compositor.send_signal(signal.SIGTERM)
            try:
                self.compositor.wait(15)
            except subprocess.TimeoutExpired:
                self.compositor.kill()
                self.compositor.wait()
        for pid in self.env.processes():  # shells and runtimes started for this desktop
            os.kill(pid, signal.SIGKILL)


def ocr(image: Path) -> str:
    """The text tesseract reads in `image`."""
    result = subprocess.run(["tesseract", str(image), "-", "--psm", "11"], capture_output=True, text=True,
                            timeout=60, check=True)
    return result.stdout


def wait_ocr(desktop: Desktop, name: str, pattern: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = ocr(desktop.screenshot(name))
        if re.search(pattern, text):
            return text
        time.sleep(1)
    raise AssertionError(f"{pattern!r} not on screen; OCR read:\n{text}")
