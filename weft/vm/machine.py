"""A booted WEFT VM, driven like a test reads: wait_for_unit, succeed, fail, wait_for_console,
screenshot, send_key, reboot, shutdown. QEMU runs with QMP on a Unix socket, the serial
console logged to a file (kept as an artifact) and, for test-profile images, the test shell
on a virtio console (see weft.vm.console).
"""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from qemu.qmp import ConnectError
from qemu.qmp.legacy import QEMUMonitorProtocol

from weft.errors import WeftError
from weft.vm.console import TestConsole
from weft.vm.qemu import Accel, VmConfig, create_overlay, prepare_efi_vars, qemu_argv

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class MachineError(WeftError):
    pass


class Machine:
    """One QEMU process booting `image` through a private overlay in `workdir`."""

    def __init__(self, image: Path, workdir: Path, accel: Accel, *, name: str = "machine",
                 disk: Path | None = None, test_console: bool = True):
        self.name = name
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.serial_log = workdir / f"{name}-serial.log"
        self._disk = disk or create_overlay(image, workdir / f"{name}-disk.qcow2")
        self.config = VmConfig(
            disk=self._disk,
            efi_vars=prepare_efi_vars(workdir / f"{name}-efivars.fd"),
            accel=accel,
            qmp_socket=workdir / f"{name}-qmp.sock",
            serial=self.serial_log,
            test_console=workdir / f"{name}-console.sock" if test_console else None,
        )
        self._process: subprocess.Popen[bytes] | None = None
        self._qmp: QEMUMonitorProtocol | None = None
        self._console: TestConsole | None = None
        self._boot_offset = 0
        self.started_at = 0.0

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        for stale in (self.config.qmp_socket, self.config.test_console):
            if stale is not None:
                stale.unlink(missing_ok=True)
        self.serial_log.write_bytes(b"")
        argv = qemu_argv(self.config)
        (self.workdir / f"{self.name}-qemu.cmdline").write_text(" ".join(argv) + "\n")
        self.started_at = time.monotonic()
        # QEMU is long-running, so it is spawned rather than run(); its stderr is kept.
        with open(self.workdir / f"{self.name}-qemu.stderr", "wb") as stderr:
            self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            self._qmp = self._connect_qmp(timeout=30)
            if self.config.test_console is not None:
                self._console = TestConsole(self.config.test_console)
                self._console.connect(timeout=30)
        except BaseException:
            self.kill()
            raise

    def _connect_qmp(self, timeout: float) -> QEMUMonitorProtocol:
        """QEMU creates the socket file before it listens on it, so retry until it answers."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_running()
            qmp = QEMUMonitorProtocol(str(self.config.qmp_socket))
            try:
                qmp.connect()
                return qmp
            except (ConnectError, OSError):
                qmp.close()
                if time.monotonic() > deadline:
                    raise MachineError(f"QMP socket {self.config.qmp_socket} did not answer "
                                       f"within {timeout:g} s") from None
                time.sleep(0.2)

    def _check_running(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            stderr = (self.workdir / f"{self.name}-qemu.stderr").read_text(errors="replace")
            raise MachineError(f"QEMU exited with status {self._process.returncode}: {stderr.strip()}"
                               f"\nlast serial output:\n{self.serial_tail()}")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def shutdown(self, timeout: float = 120) -> None:
        """ACPI power-off (the guest shuts down cleanly); killed if it does not stop in time."""
        if not self.running:
            return
        assert self._process is not None and self._qmp is not None
        try:
            self._qmp.cmd("system_powerdown")
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise MachineError(f"{self.name} did not power off within {timeout:g} s") from None
        finally:
            self._close_channels()

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._close_channels()

    def _close_channels(self) -> None:
        if self._console is not None:
            self._console.close()
            self._console = None
        if self._qmp is not None:
            try:
                self._qmp.close()
            except Exception:  # QEMU may already be gone; nothing left to close
                pass
            self._qmp = None

    def reboot(self, timeout: float) -> None:
        """Reboot from inside the guest and wait until the test shell answers again."""
        self._shell().send_line("systemctl reboot")
        self.wait_for_console(r"reboot: Restarting system", timeout)
        self._boot_offset = self.serial_log.stat().st_size
        self.wait_for_shell(timeout)

    # -- serial console ----------------------------------------------------------------

    def serial_text(self) -> str:
        """The serial output of the current boot."""
        with open(self.serial_log, "rb") as fh:
            fh.seek(self._boot_offset)
            return fh.read().decode(errors="replace")

    def serial_tail(self, lines: int = 25) -> str:
        return "\n".join(self.serial_text().splitlines()[-lines:])

    def wait_for_console(self, regex: str, timeout: float) -> re.Match[str]:
        """Wait until the serial output of the current boot matches `regex`."""
        pattern = re.compile(regex)
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(self.serial_text())
            if match:
                return match
            self._check_running()
            if time.monotonic() > deadline:
                raise MachineError(f"{self.name}: no console output matching {regex!r} within "
                                   f"{timeout:g} s; last lines:\n{self.serial_tail()}")
            time.sleep(0.5)

    # -- test shell --------------------------------------------------------------------

    def _shell(self) -> TestConsole:
        if self._console is None:
            raise MachineError("this machine has no test console (boot a test-profile image)")
        return self._console

    def wait_for_shell(self, timeout: float) -> None:
        self._check_running()
        self._shell().wait_ready(timeout)

    def execute(self, command: str, timeout: float = 120) -> tuple[int, str]:
        self._check_running()
        return self._shell().execute(command, timeout)

    def succeed(self, command: str, timeout: float = 120) -> str:
        """Run `command`; return its output, or fail with its status and output."""
        status, output = self.execute(command, timeout)
        if status != 0:
            raise MachineError(f"command failed with exit status {status}: {command}\n{output}")
        return output

    def fail(self, command: str, timeout: float = 120) -> str:
        """Run `command`, which must exit non-zero; return its output."""
        status, output = self.execute(command, timeout)
        if status == 0:
            raise MachineError(f"command unexpectedly succeeded: {command}\n{output}")
        return output

    def wait_for_unit(self, unit: str, timeout: float = 300) -> None:
        """Wait until `unit` is active; fail at once if it failed."""
        deadline = time.monotonic() + timeout
        while True:
            _, state = self.execute(f"systemctl is-active {unit}", timeout=30)
            state = state.strip()
            if state == "active":
                return
            if state == "failed":
                _, status = self.execute(f"systemctl status --no-pager {unit}", timeout=30)
                raise MachineError(f"unit {unit} failed:\n{status}")
            if time.monotonic() > deadline:
                raise MachineError(f"unit {unit} not active within {timeout:g} s (state: {state})")
            time.sleep(1)

    # -- display and input (QMP) ------------------------------------------------------

    def _monitor(self) -> QEMUMonitorProtocol:
        self._check_running()
        if self._qmp is None:
            raise MachineError(f"{self.name} is not running")
        return self._qmp

    def screenshot(self, path: Path) -> Path:
        """Save the guest display as PNG (QMP screendump)."""
        path = path.with_suffix(".png").resolve()
        self._monitor().cmd("screendump", filename=str(path), format="png")
        if not path.is_file() or path.read_bytes()[:8] != PNG_MAGIC:
            raise MachineError(f"screendump did not write a PNG to {path}")
        return path

    def send_key(self, keys: str) -> None:
        """Press a key combination such as "ctrl-alt-delete" (QEMU qcodes joined by '-')."""
        codes = [{"type": "qcode", "data": key} for key in keys.split("-")]
        self._monitor().cmd("send-key", keys=codes)
