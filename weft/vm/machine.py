"""A booted WEFT VM, driven like a test reads: wait_for_unit, succeed, fail, wait_until_succeeds,
wait_for_console, screenshot, send_key, reboot, wait_for_reboot, shutdown. QEMU runs with QMP on
a Unix socket, the serial console logged to a file and, for test-profile images, the test shell
on a virtio console (see weft.vm.console).

Reboots: QEMU keeps running when the guest reboots (the VM is reset, disk and UEFI variables
stay). The harness learns of a reset from QMP's RESET event and notes where in the serial log
it saw it, so a test can read what the next boot printed: `serial_mark()` before, then
`wait_for_reset(since=mark)` or `wait_for_reboot(since=mark)`, and `wait_for_console(...,
since=...)` / `serial_text(since=...)` after.

Use it as a context manager: QEMU is killed on the way out, whatever happened, and the files
in `workdir` stay: NAME-serial.log, NAME-qemu.cmdline, NAME-qemu.stderr and NAME-actions.log,
the timeline of everything the harness did (also logged to the `weft.vm.NAME` logger, which
pytest shows with a failed test). Every wait goes through weft.vm.poll; a wait that times out
logs what the guest was doing.
"""
from __future__ import annotations

import contextlib
import logging
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from qemu.qmp import ConnectError
from qemu.qmp.legacy import QEMUMonitorProtocol

from weft.errors import WeftError
from weft.proc import spawn
from weft.vm.console import ConsoleClosed, ConsoleError, ConsoleTimeout, Reply, TestConsole
from weft.vm.ocr import PNG_MAGIC, Screen, Word, png_size, read_number, read_screen
from weft.vm.poll import WaitTimeout, poll
from weft.vm.qemu import Accel, VmConfig, create_overlay, disk_efi_vars, qemu_argv

# QEMU's absolute pointer axes run from 0 to this at the screen's far edge (INPUT_EVENT_ABS_MAX).
ABS_MAX = 0x7FFF
CONNECT_TIMEOUT_S = 30
QUERY_TIMEOUT_S = 30  # one systemctl query inside a wait
LOGGED_OUTPUT_CHARS = 4000
T = TypeVar("T")
# The kernel's first line about its command line (once per boot).
KERNEL_ROOTHASH = re.compile(r"\] Command line: .*?\broothash=([0-9a-f]{64})")


class MachineError(WeftError):
    pass


class Machine:
    """One QEMU process booting `image` through a private overlay in `workdir`."""

    def __init__(self, image: Path, workdir: Path, accel: Accel, *, name: str = "machine",
                 disk: Path | None = None, test_console: bool = True, secure_boot: bool = False,
                 drives: tuple[Path, ...] = ()):
        self.name = name
        self.image = image
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.serial_log = workdir / f"{name}-serial.log"
        self.actions_log = workdir / f"{name}-actions.log"
        self.poll_interval = 1.0  # between tries of a wait on the guest
        self._disk_given = disk is not None
        self.config = VmConfig(
            disk=disk or workdir / f"{name}-disk.qcow2",
            efi_vars=workdir / f"{name}-efivars.fd",
            accel=accel,
            qmp_socket=workdir / f"{name}-qmp.sock",
            serial=self.serial_log,
            test_console=workdir / f"{name}-console.sock" if test_console else None,
            secure_boot=secure_boot,
            drives=drives,
        )
        self.log = logging.getLogger(f"weft.vm.{name}")
        self.log.setLevel(logging.DEBUG)  # the actions log and pytest's capture get everything
        self._log_handler = logging.FileHandler(self.actions_log, mode="w")
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(message)s", "%H:%M:%S"))
        self.log.addHandler(self._log_handler)
        self._process: subprocess.Popen[bytes] | None = None
        self._qmp: QEMUMonitorProtocol | None = None
        self._console: TestConsole | None = None
        self._boot_offset = 0
        # Guest resets seen over QMP, each as the serial log size when it was seen (about
        # where the next boot's output starts), and for each serial_mark() how many resets
        # were seen before it: two positions can be equal when the guest printed nothing.
        self._resets: list[int] = []
        self._resets_before_mark: dict[int, int] = {0: 0}
        self.started_at = 0.0

    # -- life cycle -------------------------------------------------------------------

    def __enter__(self) -> Machine:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None and self.serial_log.exists():
            self.log.error("leaving after %s: %s\nlast serial output:\n%s", exc_type.__name__ if exc_type else "error",
                           exc, self.serial_tail())
        self.close()

    def close(self) -> None:
        """Kill QEMU if it still runs and finish the actions log; every log file stays."""
        self.kill()
        self.log.removeHandler(self._log_handler)
        self._log_handler.close()

    def start(self) -> None:
        self.log.info("start: %s (%s%s)", self.image, self.config.accel,
                      ", Secure Boot" if self.config.secure_boot else "")
        # An existing disk is this machine's earlier life: it keeps its variables too (keys
        # enrolled on the disk's first boot live there); a fresh disk gets fresh variables.
        fresh_disk = not self._disk_given and not self.config.disk.exists()
        if fresh_disk:
            create_overlay(self.image, self.config.disk)
        disk_efi_vars(self.config.efi_vars, fresh_disk=fresh_disk, secure_boot=self.config.secure_boot)
        for stale in (self.config.qmp_socket, self.config.test_console):
            if stale is not None:
                stale.unlink(missing_ok=True)
        self.serial_log.write_bytes(b"")
        self._boot_offset = 0
        self._resets, self._resets_before_mark = [], {0: 0}
        argv = qemu_argv(self.config)
        (self.workdir / f"{self.name}-qemu.cmdline").write_text(shlex.join(argv) + "\n")
        self.log.info("+ %s", shlex.join(argv))
        self.started_at = time.monotonic()
        # QEMU is long-running, so it is spawned rather than run(); its stderr is kept.
        with open(self.workdir / f"{self.name}-qemu.stderr", "wb") as stderr:
            self._process = spawn(argv, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            self._qmp = self._connect_qmp(timeout=CONNECT_TIMEOUT_S)
            if self.config.test_console is not None:
                console = TestConsole(self.config.test_console)
                console.connect(timeout=CONNECT_TIMEOUT_S)
                self._console = console
        except BaseException:
            self.kill()
            raise
        self.log.info("QEMU running (pid %d), QMP connected", self._process.pid)

    def _connect_qmp(self, timeout: float) -> QEMUMonitorProtocol:
        """QEMU creates the socket file before it listens on it, so retry until it answers."""
        def attempt() -> QEMUMonitorProtocol | None:
            self._check_running()
            qmp = QEMUMonitorProtocol(str(self.config.qmp_socket))
            try:
                qmp.connect()
                return qmp
            except (ConnectError, OSError):
                qmp.close()
                return None

        return self._poll(attempt, what=f"QMP socket {self.config.qmp_socket} to answer", timeout=timeout,
                          interval=0.2)

    def _check_running(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            stderr = (self.workdir / f"{self.name}-qemu.stderr").read_text(errors="replace")
            message = (f"QEMU exited with status {self._process.returncode}: {stderr.strip()}"
                       f"\nlast serial output:\n{self.serial_tail()}")
            self.log.error("%s", message)
            raise MachineError(message)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def shutdown(self, timeout: float = 120) -> None:
        """ACPI power-off (the guest shuts down cleanly); killed if it does not stop in time."""
        if not self.running:
            return
        assert self._process is not None and self._qmp is not None
        self.log.info("shutdown: ACPI power button")
        try:
            self._qmp.cmd("system_powerdown")
            self._process.wait(timeout=timeout)
            self.log.info("powered off")
        except subprocess.TimeoutExpired:
            self.kill()
            raise MachineError(f"{self.name} did not power off within {timeout:g} s") from None
        finally:
            self._close_channels()

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self.log.info("kill: QEMU (pid %d)", self._process.pid)
            self._process.kill()
            self._process.wait()
        self._close_channels()

    def _close_channels(self) -> None:
        if self._console is not None:
            self._console.close()
            self._console = None
        if self._qmp is not None:
            # QEMU may already be gone; nothing left to close.
            with contextlib.suppress(Exception):
                self._qmp.close()
            self._qmp = None

    def reboot(self, timeout: float, *, shell: bool = True) -> int:
        """Reboot from inside the guest (systemctl reboot) and wait for the reset, then, with
        `shell`, until the test shell answers again. Returns the serial position where the new
        boot's output starts (for wait_for_console(since=...)); `shell=False` is for a boot
        that is expected not to get that far."""
        self.log.info("reboot")
        mark = self.serial_mark()
        # Not execute(): the shell is killed on the way down and never replies.
        self._shell().send_line("systemctl reboot")
        if shell:
            return self.wait_for_reboot(timeout, since=mark)
        return self.wait_for_reset(timeout, since=mark)

    def wait_for_reset(self, timeout: float, *, since: int | None = None) -> int:
        """Wait until the guest resets (reboots) after serial position `since` (a serial_mark();
        default: the start of the current boot). The reset's position becomes the start of the
        current boot, and is returned."""
        since = self._boot_offset if since is None else since

        def reset() -> int | None:
            self._check_running()
            first = self._resets_before_mark.get(since)
            if first is None:  # not a mark: go by position alone
                first = next((i for i, offset in enumerate(self._resets) if offset > since), len(self._resets))
            return first if first < len(self._resets) else None

        index = self._poll(reset, what="the guest to reset (reboot)", timeout=timeout, interval=0.5)
        self._boot_offset = self._resets[index]
        self._resets_before_mark[self._boot_offset] = index + 1
        return self._boot_offset

    def wait_for_reboot(self, timeout: float, *, since: int | None = None) -> int:
        """Wait for a guest-initiated reboot after `since` (see wait_for_reset) and then until
        the test shell answers again; `timeout` covers both. Returns where the boot's output
        starts."""
        deadline = time.monotonic() + timeout
        offset = self.wait_for_reset(timeout, since=since)
        self.wait_for_shell(max(1.0, deadline - time.monotonic()))
        return offset

    def _take_events(self) -> None:
        """Read the QMP events QEMU has sent and note each guest reset."""
        if self._qmp is None or not self.running:
            return
        # A round trip first: every event QEMU sent before its reply has then been read.
        self._qmp.cmd("query-status")
        for event in self._qmp.get_events():
            if event.get("event") == "RESET":
                offset = self._serial_size()
                self._resets.append(offset)
                self.log.info("guest reset (%s) at serial position %d", event.get("data", {}).get("reason", "?"),
                              offset)

    # -- waiting ------------------------------------------------------------------------

    def _poll(self, check: Callable[[], T | None], *, what: str, timeout: float, interval: float | None = None,
              diagnose: Callable[[], str] | None = None) -> T:
        self.log.info("wait for %s (up to %g s)", what, timeout)
        started = time.monotonic()

        def noting_resets() -> T | None:
            # Every wait notes guest resets as they come, so the serial position noted for
            # one is near where it happened even when the test waits for something else.
            self._take_events()
            return check()

        result = poll(noting_resets, what=what, timeout=timeout,
                      interval=self.poll_interval if interval is None else interval,
                      diagnose=diagnose or self._serial_diagnostics, logger=self.log)
        self.log.info("done: %s after %.1f s", what, time.monotonic() - started)
        return result

    def _serial_diagnostics(self) -> str:
        return f"last serial output:\n{self.serial_tail()}"

    def _guest_diagnostics(self, unit: str | None = None) -> str:
        """What systemd is doing (pending jobs, the unit's status) and the last console lines."""
        parts = []
        queries = ["systemctl list-jobs --no-pager"]
        if unit is not None:
            queries.append(f"systemctl status --no-pager --full --lines=20 -- {shlex.quote(unit)}")
        for query in queries:
            try:
                parts.append(f"$ {query}\n{self._query(query).output.rstrip()}")
            except WeftError as exc:
                parts.append(f"$ {query}\n(failed: {exc})")
        parts.append(self._serial_diagnostics())
        return "\n".join(parts)

    # -- serial console ----------------------------------------------------------------

    def _serial_size(self) -> int:
        try:
            return self.serial_log.stat().st_size
        except FileNotFoundError:
            return 0

    def serial_mark(self) -> int:
        """The current end of the serial log: pass it as `since` to read or wait for only what
        comes after this point (e.g. take it before causing a reboot)."""
        self._take_events()  # resets noted from here on are after the mark
        mark = self._serial_size()
        self._resets_before_mark[mark] = len(self._resets)
        return mark

    def serial_text(self, since: int | None = None) -> str:
        """The serial output from position `since` (a serial_mark()); by default, of the current boot."""
        try:
            with open(self.serial_log, "rb") as fh:
                fh.seek(self._boot_offset if since is None else since)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def serial_tail(self, lines: int = 25) -> str:
        return "\n".join(self.serial_text().splitlines()[-lines:])

    def wait_for_console(self, regex: str, timeout: float, *, since: int | None = None) -> re.Match[str]:
        """Wait until the serial output from `since` (a serial_mark(); by default the current
        boot's) matches `regex`."""
        pattern = re.compile(regex)

        def matched() -> re.Match[str] | None:
            match = pattern.search(self.serial_text(since))
            if match is None:
                self._check_running()
            return match

        match = self._poll(matched, what=f"console output matching {regex!r}", timeout=timeout, interval=0.5)
        self.log.info("console: %s", match.group(0))
        return match

    def boots_since(self, since: int) -> list[str]:
        """The root hash of each boot whose kernel started after serial position `since`, in
        order (the kernel logs its command line, with the UKI's roothash=, first thing)."""
        return KERNEL_ROOTHASH.findall(self.serial_text(since))

    def wait_for_boots(self, done: Callable[[list[str]], bool], *, since: int, timeout: float) -> list[str]:
        """Wait until `done(boots_since(since))` holds — e.g. "the last boot was release 2's" —
        with no input to the guest: for reboots the guest makes by itself. Returns those boots."""

        def reached() -> list[str] | None:
            boots = self.boots_since(since)
            if done(boots):
                return boots
            self._check_running()
            return None

        boots = self._poll(reached, what="the expected sequence of boots", timeout=timeout, interval=2.0)
        self.log.info("boots: %s", ", ".join(b[:12] for b in boots))
        return boots

    # -- test shell --------------------------------------------------------------------

    def _shell(self) -> TestConsole:
        if self._console is None:
            raise MachineError("this machine has no test console (boot a test-profile image)")
        return self._console

    def wait_for_shell(self, timeout: float) -> None:
        """Wait until the guest shell answers (it starts late in boot, and again after a reboot)."""
        deadline = time.monotonic() + timeout

        def answers() -> bool | None:
            self._check_running()
            try:
                self._shell().execute("true", timeout=min(5.0, max(0.1, deadline - time.monotonic())))
                return True
            except ConsoleTimeout:
                return None
            except ConsoleClosed:
                # QEMU keeps the console's connection across a guest reset (lines sent while
                # the guest is down wait in the socket); should it drop all the same, connect again.
                self.log.info("test console closed; connecting again")
                with contextlib.suppress(WaitTimeout):  # tried again on the next round
                    self._shell().reconnect(timeout=min(5.0, max(0.1, deadline - time.monotonic())))
                return None

        self._poll(answers, what="the guest test shell to answer", timeout=timeout, interval=0)

    def _query(self, command: str, timeout: float = QUERY_TIMEOUT_S) -> Reply:
        """A command the harness runs for itself (inside a wait): logged at DEBUG only."""
        self._check_running()
        reply = self._shell().execute(command, timeout)
        self.log.debug("$ %s -> exit %d\n%s", command, reply.status, _clip(reply.output))
        return reply

    def execute(self, command: str, timeout: float = 120) -> tuple[int, str]:
        """Run `command` in the guest; return (exit status, stdout+stderr)."""
        self._check_running()
        self.log.info("$ %s", command)
        started = time.monotonic()
        try:
            reply = self._shell().execute(command, timeout)
        except ConsoleError as exc:
            self.log.error("%s\nlast serial output:\n%s", exc, self.serial_tail())
            raise
        self.log.info("exit %d after %.1f s", reply.status, time.monotonic() - started)
        if reply.output:
            self.log.debug("%s", _clip(reply.output))
        return reply.status, reply.output

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

    def wait_until_succeeds(self, command: str, timeout: float = 300) -> str:
        """Repeat `command` until it exits 0; return its output."""
        last: list[Reply] = []

        def succeeded() -> str | None:
            reply = self._query(command)
            last[:] = [reply]
            return reply.output if reply.status == 0 else None

        def diagnose() -> str:
            tried = f"last try: exit {last[0].status}\n{_clip(last[0].output)}\n" if last else ""
            return tried + self._serial_diagnostics()

        return self._poll(succeeded, what=f"`{command}` to succeed", timeout=timeout, diagnose=diagnose)

    def unit_state(self, unit: str) -> dict[str, str]:
        """ActiveState, SubState and LoadState of `unit` (systemctl show)."""
        reply = self._query("systemctl show --property=ActiveState,SubState,LoadState -- " + shlex.quote(unit))
        if reply.status != 0:
            raise MachineError(f"systemctl show {unit} failed with exit status {reply.status}: {reply.output}")
        return dict(line.split("=", 1) for line in reply.output.splitlines() if "=" in line)

    def _jobs_pending(self) -> bool:
        listing = self._query("systemctl list-jobs --no-legend --no-pager").output.strip()
        return bool(listing) and not listing.startswith("No jobs")

    def wait_for_unit(self, unit: str, timeout: float = 300) -> None:
        """Wait until `unit` is active. Fail at once when it failed, or when it is inactive
        and no job is pending (nothing is going to start it)."""
        def active() -> bool | None:
            state = self.unit_state(unit).get("ActiveState")
            if state == "active":
                return True
            if state == "failed":
                self._unit_gave_up(unit, "failed")
            if state == "inactive" and not self._jobs_pending():
                # It may have started between the two queries; only a second "inactive" counts.
                again = self.unit_state(unit)
                if again.get("ActiveState") == "active":
                    return True
                if again.get("ActiveState") == "inactive":
                    self._unit_gave_up(unit, f"inactive with no job pending (load state {again.get('LoadState')})")
            return None

        self._poll(active, what=f"unit {unit} to be active", timeout=timeout,
                   diagnose=lambda: self._guest_diagnostics(unit))

    def _unit_gave_up(self, unit: str, why: str) -> None:
        message = f"unit {unit} is {why}\n{self._guest_diagnostics(unit)}"
        self.log.error("%s", message)
        raise MachineError(message)

    # -- display and input (QMP) ------------------------------------------------------

    def _monitor(self) -> QEMUMonitorProtocol:
        self._check_running()
        if self._qmp is None:
            raise MachineError(f"{self.name} is not running")
        return self._qmp

    def screenshot(self, path: Path) -> Path:
        """Save the guest display as PNG (QMP screendump)."""
        path = path.with_suffix(".png").resolve()
        self.log.info("screenshot: %s", path)
        self._monitor().cmd("screendump", filename=str(path), format="png")
        if not path.is_file() or path.read_bytes()[:8] != PNG_MAGIC:
            raise MachineError(f"screendump did not write a PNG to {path}")
        return path

    def _screen(self) -> tuple[Path, Screen]:
        """A fresh screenshot (kept as NAME-screen.png, the last one the test saw) and its text."""
        path = self.screenshot(self.workdir / f"{self.name}-screen.png")
        return path, read_screen(path)

    def screen_text(self) -> str:
        """The text on the guest's screen now, read by OCR."""
        return self._screen()[1].text

    def screen_number(self, box: tuple[int, int, int, int]) -> int | None:
        """The integer shown alone in `box` (left, top, right, bottom) of the screen now, or None."""
        return read_number(self.screenshot(self.workdir / f"{self.name}-screen.png"), box)

    def wait_for_text(self, regex: str, timeout: float = 120) -> Screen:
        """Wait until OCR reads text matching `regex` (case-insensitive) on the screen."""
        pattern = re.compile(regex, re.IGNORECASE)
        last: list[str] = [""]

        def readable() -> Screen | None:
            _, screen = self._screen()
            last[0] = screen.text
            return screen if pattern.search(screen.text) else None

        def diagnose() -> str:
            return f"last text read from the screen ({self.name}-screen.png):\n{last[0]}\n{self._serial_diagnostics()}"

        return self._poll(readable, what=f"text /{regex}/ on the screen", timeout=timeout, interval=2.0,
                          diagnose=diagnose)

    def find_word(self, regex: str, timeout: float = 120) -> Word:
        """Wait until a word matching `regex` (whole word, case-insensitive) is on the screen."""
        pattern = re.compile(regex, re.IGNORECASE)
        screen = self.wait_for_text(rf"(?<!\S)(?:{regex})(?!\S)", timeout)
        for word in screen.words:
            if pattern.fullmatch(word.text.strip(".,:;!?")):
                return word
        raise MachineError(f"/{regex}/ is in the screen's text but not as one word: {screen.text!r}")

    def move_pointer(self, x: int, y: int) -> None:
        """Put the (absolute) pointer at screen pixel (x, y)."""
        width, height = png_size(self.screenshot(self.workdir / f"{self.name}-pointer.png"))
        if not (0 <= x < width and 0 <= y < height):
            raise MachineError(f"({x}, {y}) is outside the {width}x{height} screen")
        self.log.info("pointer to (%d, %d)", x, y)
        self._monitor().cmd("input-send-event", events=[
            {"type": "abs", "data": {"axis": "x", "value": round(x * ABS_MAX / max(1, width - 1))}},
            {"type": "abs", "data": {"axis": "y", "value": round(y * ABS_MAX / max(1, height - 1))}},
        ])

    def click(self, x: int, y: int, button: str = "left") -> None:
        """Move the pointer to (x, y) and press and release `button` there."""
        self.move_pointer(x, y)
        self.log.info("click %s at (%d, %d)", button, x, y)
        for down in (True, False):
            self._monitor().cmd("input-send-event", events=[{"type": "btn", "data": {"down": down, "button": button}}])
            time.sleep(0.05)

    def click_word(self, regex: str, timeout: float = 120) -> Word:
        """Wait for a word matching `regex` on the screen and click its middle."""
        word = self.find_word(regex, timeout)
        self.click(*word.center)
        return word

    def send_key(self, keys: str) -> None:
        """Press a key combination such as "ctrl-alt-delete" (QEMU qcodes joined by '-')."""
        self.log.info("send key: %s", keys)
        codes = [{"type": "qcode", "data": key} for key in keys.split("-")]
        self._monitor().cmd("send-key", keys=codes)

    def note(self, message: str) -> None:
        """Write a line of the test's own into the actions log (e.g. which test starts)."""
        self.log.info("%s", message)


def _clip(text: str) -> str:
    return text if len(text) <= LOGGED_OUTPUT_CHARS else text[:LOGGED_OUTPUT_CHARS] + f"... ({len(text)} chars)"
