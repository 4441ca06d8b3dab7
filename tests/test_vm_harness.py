"""The VM harness without a VM: the console framing (against a real bash, through a tty-like
byte stream), the QEMU command line (with and without Secure Boot), the UEFI variable store,
the poll helper, Machine's waits against a scripted guest, and Machine's start, reboots and
serial marks against a stand-in QEMU process (tests/fake_qemu.py)."""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from weft.cli import build_parser
from weft.errors import WeftError
from weft.proc import spawn
from weft.vm import qemu
from weft.vm.console import (
    BEGIN,
    END,
    ConsoleClosed,
    ConsoleError,
    ConsoleTimeout,
    Reply,
    ReplyParser,
    TestConsole,
    frame_command,
    new_nonce,
)
from weft.vm.machine import Machine, MachineError
from weft.vm.poll import WaitTimeout, poll
from weft.vm.qemu import (
    OVMF_CODE,
    OVMF_SECBOOT_CODE,
    OVMF_VARS,
    VmConfig,
    create_overlay,
    disk_efi_vars,
    firmware,
    option_value,
    prepare_efi_vars,
    qemu_argv,
)

FAKE_QEMU = Path(__file__).parent / "fake_qemu.py"

# -- console framing ---------------------------------------------------------------------


def _guest_bytes(line: str) -> bytes:
    """What the guest's tty sends back for a typed line: its echo, then what bash printed,
    every "\\n" turned into "\\r\\n" (the tty's onlcr)."""
    out = subprocess.run(["bash", "--norc", "--noprofile"], input=(line + "\n").encode(), capture_output=True,
                         timeout=30, check=True).stdout
    return ((line + "\n").encode() + out).replace(b"\n", b"\r\n")


def _run_framed(command: str, chunks: Callable[[bytes], Iterator[bytes]]) -> Reply:
    nonce = new_nonce()
    parser = ReplyParser(nonce)
    reply = None
    for chunk in chunks(_guest_bytes(frame_command(command, nonce))):
        assert reply is None, "bytes after the reply were needed"
        reply = parser.feed(chunk)
    assert reply is not None
    return reply


def _whole(data: bytes) -> Iterator[bytes]:
    yield data


def _bytewise(data: bytes) -> Iterator[bytes]:
    for i in range(len(data)):
        yield data[i:i + 1]


def _random_splits(data: bytes) -> Iterator[bytes]:
    rng = random.Random(7)
    i = 0
    while i < len(data):
        n = rng.randint(1, 40)
        yield data[i:i + n]
        i += n


SPLITS = [_whole, _bytewise, _random_splits]


@pytest.mark.parametrize("chunks", SPLITS)
@pytest.mark.parametrize("command,status,output", [
    ("echo hello", 0, "hello\n"),
    ("printf 'a\\nb'; exit 3", 3, "a\nb"),
    ("echo out; echo err >&2; false", 1, "out\nerr\n"),
    ("cat", 0, ""),  # stdin is /dev/null: nothing typed later is read as input
    ("echo \"it's \\\"quoted\\\" $((1 + 2))\"", 0, "it's \"quoted\" 3\n"),
    ("printf '\\303\\251\\377'", 0, "\u00e9\ufffd"),
    ("printf 'line\\r\\nwith crlf\\r\\n'", 0, "line\r\nwith crlf\r\n"),  # the command's own \r\n is kept
])
def test_framed_command_returns_exact_output_and_status(command: str, status: int, output: str,
                                                        chunks: Callable[[bytes], Iterator[bytes]]) -> None:
    assert _run_framed(command, chunks) == Reply(status, output)


@pytest.mark.parametrize("chunks", SPLITS)
def test_output_containing_the_markers_is_not_taken_for_the_frame(chunks: Callable[[bytes], Iterator[bytes]]) -> None:
    nonce = new_nonce()
    command = f"printf '%s\\n' '{END}{nonce} 0' '{BEGIN}{nonce}' '{END}{nonce} 0'; exit 7"
    parser = ReplyParser(nonce)
    replies = [r for chunk in chunks(_guest_bytes(frame_command(command, nonce))) if (r := parser.feed(chunk))]
    assert replies[0] == Reply(7, f"{END}{nonce} 0\n{BEGIN}{nonce}\n{END}{nonce} 0\n")


def test_echo_of_the_sent_line_alone_is_no_reply() -> None:
    nonce = new_nonce()
    line = frame_command("echo hi", nonce)
    assert ReplyParser(nonce).feed(line.encode() + b"\r\n") is None


def test_a_late_reply_to_an_earlier_command_is_ignored() -> None:
    old, new = new_nonce(), new_nonce()
    stale = _guest_bytes(frame_command("echo stale; exit 9", old))
    parser = ReplyParser(new)
    assert parser.feed(stale) is None
    assert parser.feed(_guest_bytes(frame_command("echo fresh", new))) == Reply(0, "fresh\n")


def test_garbled_reply_is_an_error() -> None:
    nonce = new_nonce()
    with pytest.raises(ConsoleError, match="garbled"):
        ReplyParser(nonce).feed(f"{BEGIN}{nonce}\r\nnot base64 at all!\r\n{END}{nonce} 0\r\n".encode())


def test_too_long_a_command_is_refused() -> None:
    with pytest.raises(ConsoleError, match="too long"):
        frame_command("x" * 4000, new_nonce())


# -- the console over a socket -------------------------------------------------------------


class FakeGuest:
    """A Unix socket server standing in for QEMU's test-console chardev: each received line runs
    in bash, and the answer goes back tty-style in small chunks. With `close_after_line`, the
    first connection is closed on its first line; later ones are served."""

    def __init__(self, path: Path, *, answer: bool = True, close_after_line: bool = False):
        self.path = path
        self.answer = answer
        self.close_after_line = close_after_line
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:  # closed
                return
            self._serve_one(conn)

    def _serve_one(self, conn: socket.socket) -> None:
        with conn:
            buffer = b""
            while chunk := conn.recv(4096):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if self.close_after_line:
                        self.close_after_line = False
                        return
                    if self.answer:
                        data = _guest_bytes(line.decode())
                        for i in range(0, len(data), 7):
                            conn.sendall(data[i:i + 7])

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to 108 bytes; pytest's tmp_path can be longer.
    import tempfile
    with tempfile.TemporaryDirectory(prefix="weft-h-") as tmp:
        yield Path(tmp)


def test_console_runs_commands_through_a_socket(short_dir: Path) -> None:
    guest = FakeGuest(short_dir / "c.sock")
    console = TestConsole(guest.path)
    console.connect(timeout=5)
    try:
        assert console.execute("echo one", timeout=10) == Reply(0, "one\n")
        assert console.execute("echo two >&2; exit 4", timeout=10) == Reply(4, "two\n")
    finally:
        console.close()
        guest.close()


def test_console_times_out_when_the_guest_does_not_answer(short_dir: Path) -> None:
    guest = FakeGuest(short_dir / "c.sock", answer=False)
    console = TestConsole(guest.path)
    console.connect(timeout=5)
    started = time.monotonic()
    with pytest.raises(ConsoleTimeout, match=r"within 0\.5 s: sleep 1"):
        console.execute("sleep 1", timeout=0.5)
    assert time.monotonic() - started < 3
    console.close()
    guest.close()


def test_console_reports_a_closed_connection_and_connects_again(short_dir: Path) -> None:
    guest = FakeGuest(short_dir / "c.sock", close_after_line=True)
    console = TestConsole(guest.path)
    console.connect(timeout=5)
    with pytest.raises(ConsoleClosed, match="closed"):
        console.execute("true", timeout=10)
    console.reconnect(timeout=5)
    assert console.execute("echo again", timeout=10) == Reply(0, "again\n")
    console.close()
    with pytest.raises(ConsoleClosed, match="not connected"):
        console.execute("true", timeout=1)
    guest.close()


def test_console_connect_gives_up_after_its_timeout(short_dir: Path) -> None:
    with pytest.raises(WaitTimeout, match="test console"):
        TestConsole(short_dir / "absent.sock").connect(timeout=0.3)


# -- QEMU command line ---------------------------------------------------------------------


def _config(tmp: Path, **changes: object) -> VmConfig:
    fields: dict[str, object] = {"disk": tmp / "disk.qcow2", "efi_vars": tmp / "vars.fd", "accel": "tcg",
                                 "qmp_socket": tmp / "qmp.sock", "serial": tmp / "serial.log"}
    fields.update(changes)
    return VmConfig.model_validate(fields)


def _values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_qemu_argv_accelerator_and_cpu(tmp_path: Path) -> None:
    kvm = qemu_argv(_config(tmp_path, accel="kvm"), binary="qemu")
    tcg = qemu_argv(_config(tmp_path, accel="tcg", memory_mb=1024, cpus=3), binary="qemu")
    assert kvm[0] == "qemu"
    assert _values(kvm, "-accel") == ["kvm"] and _values(kvm, "-cpu") == ["host"]
    assert _values(tcg, "-accel") == ["tcg"] and _values(tcg, "-cpu") == ["max"]
    assert _values(tcg, "-m") == ["1024"] and _values(tcg, "-smp") == ["3"]
    assert _values(tcg, "-machine") == ["q35"] and _values(tcg, "-nic") == ["none"]


def test_qemu_argv_firmware_and_disk(tmp_path: Path) -> None:
    argv = qemu_argv(_config(tmp_path), binary="qemu")
    assert _values(argv, "-drive") == [
        f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
        f"if=pflash,format=raw,unit=1,file={tmp_path / 'vars.fd'}",
        f"if=virtio,format=qcow2,file={tmp_path / 'disk.qcow2'}",
    ]


def test_qemu_argv_extra_drives_are_read_only_raw_disks_after_the_system_disk(tmp_path: Path) -> None:
    argv = qemu_argv(_config(tmp_path, drives=(tmp_path / "medium-2.img", tmp_path / "a,b.img")), binary="qemu")
    assert _values(argv, "-drive")[2:] == [
        f"if=virtio,format=qcow2,file={tmp_path / 'disk.qcow2'}",
        f"if=virtio,format=raw,readonly=on,file={tmp_path / 'medium-2.img'}",
        f"if=virtio,format=raw,readonly=on,file={tmp_path / 'a,,b.img'}",
    ]


def test_qemu_argv_secure_boot_firmware_smm_and_secure_flash(tmp_path: Path) -> None:
    argv = qemu_argv(_config(tmp_path, secure_boot=True), binary="qemu")
    assert _values(argv, "-machine") == ["q35,smm=on"]
    assert _values(argv, "-drive")[:2] == [
        f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_SECBOOT_CODE}",
        f"if=pflash,format=raw,unit=1,file={tmp_path / 'vars.fd'}",
    ]
    assert _values(argv, "-global") == ["driver=cfi.pflash01,property=secure,value=on"]


def test_qemu_argv_without_secure_boot_has_the_plain_firmware_and_no_smm(tmp_path: Path) -> None:
    argv = qemu_argv(_config(tmp_path), binary="qemu")
    assert _values(argv, "-machine") == ["q35"] and _values(argv, "-global") == []
    assert not any("secboot" in arg for arg in argv)


@pytest.mark.parametrize("secure_boot", [False, True])
def test_qemu_keeps_running_when_the_guest_reboots(tmp_path: Path, secure_boot: bool) -> None:
    # Enrolling keys, `systemctl reboot` and reboot tests need the VM reset, not QEMU gone.
    argv = qemu_argv(_config(tmp_path, secure_boot=secure_boot), binary="qemu")
    assert "-no-reboot" not in argv and "-no-shutdown" not in argv


def test_firmware_pair() -> None:
    assert firmware(False).code == OVMF_CODE and firmware(True).code == OVMF_SECBOOT_CODE
    # Both start from the empty store: a Secure Boot VM starts in setup mode.
    assert firmware(False).vars_template == firmware(True).vars_template == OVMF_VARS


@pytest.fixture
def fake_ovmf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stand-ins for the ovmf package's files; the empty store holds b"EMPTY"."""
    ovmf = tmp_path / "ovmf"
    ovmf.mkdir()
    for name, data in (("code.fd", b"CODE"), ("secboot.fd", b"SECBOOT"), ("vars.fd", b"EMPTY")):
        (ovmf / name).write_bytes(data)
    monkeypatch.setattr(qemu, "OVMF_CODE", ovmf / "code.fd")
    monkeypatch.setattr(qemu, "OVMF_SECBOOT_CODE", ovmf / "secboot.fd")
    monkeypatch.setattr(qemu, "OVMF_VARS", ovmf / "vars.fd")
    return ovmf


@pytest.mark.parametrize("secure_boot", [False, True])
def test_efi_vars_are_a_private_copy(tmp_path: Path, fake_ovmf: Path, secure_boot: bool) -> None:
    copy = prepare_efi_vars(tmp_path / "vars.fd", secure_boot)
    assert copy.read_bytes() == b"EMPTY"
    copy.write_bytes(b"ENROLLED")  # the guest writes its own copy only
    assert (fake_ovmf / "vars.fd").read_bytes() == b"EMPTY"


def test_efi_vars_follow_their_disk(tmp_path: Path, fake_ovmf: Path) -> None:
    store = tmp_path / "m-efivars.fd"
    assert disk_efi_vars(store, fresh_disk=True, secure_boot=True).read_bytes() == b"EMPTY"
    store.write_bytes(b"ENROLLED")
    assert disk_efi_vars(store, fresh_disk=False, secure_boot=True).read_bytes() == b"ENROLLED"
    assert disk_efi_vars(store, fresh_disk=True, secure_boot=True).read_bytes() == b"EMPTY"
    store.unlink()
    assert disk_efi_vars(store, fresh_disk=False, secure_boot=True).read_bytes() == b"EMPTY"


def test_missing_secure_boot_firmware_names_the_package(tmp_path: Path, fake_ovmf: Path) -> None:
    (fake_ovmf / "secboot.fd").unlink()
    assert prepare_efi_vars(tmp_path / "plain.fd").read_bytes() == b"EMPTY"  # the plain one still works
    for make in (lambda: prepare_efi_vars(tmp_path / "v.fd", True),
                 lambda: disk_efi_vars(tmp_path / "plain.fd", fresh_disk=False, secure_boot=True)):
        with pytest.raises(WeftError, match=r"Secure Boot firmware not found: .*secboot\.fd; "
                                            r"install the ovmf package \(bash ci/setup\.sh\)"):
            make()
    assert not (tmp_path / "v.fd").exists()


def test_vm_run_has_a_secure_boot_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["vm", "run", "--help"])
    assert "boot with UEFI Secure Boot firmware (keys are enrolled from the image on first boot)" in \
        " ".join(capsys.readouterr().out.split())
    assert build_parser().parse_args(["vm", "run", "--secure-boot"]).secure_boot is True
    assert build_parser().parse_args(["vm", "run"]).secure_boot is False


def test_qemu_argv_escapes_commas_in_paths(tmp_path: Path) -> None:
    odd = tmp_path / "a,b"
    argv = qemu_argv(_config(odd, test_console=odd / "c.sock"), binary="qemu")
    assert f"if=virtio,format=qcow2,file={tmp_path}/a,,b/disk.qcow2" in argv
    assert f"socket,id=qmp,path={tmp_path}/a,,b/qmp.sock,server=on,wait=off" in argv
    assert f"file,id=seriallog,path={tmp_path}/a,,b/serial.log" in argv
    assert f"socket,id=testshell,path={tmp_path}/a,,b/c.sock,server=on,wait=off" in argv
    assert option_value("x,y,,z") == "x,,y,,,,z"


def test_qemu_argv_qmp_serial_and_test_console(tmp_path: Path) -> None:
    logged = qemu_argv(_config(tmp_path, test_console=tmp_path / "c.sock"), binary="qemu")
    assert _values(logged, "-mon") == ["chardev=qmp,mode=control"]
    assert _values(logged, "-serial") == ["chardev:seriallog"]
    assert "virtconsole,chardev=testshell" in _values(logged, "-device")
    interactive = qemu_argv(_config(tmp_path, serial="stdio"), binary="qemu")
    assert _values(interactive, "-serial") == ["mon:stdio"]
    assert "virtio-serial-pci" not in _values(interactive, "-device")  # no test console asked for


def test_qemu_argv_has_a_display_device_wlroots_accepts_and_an_absolute_pointer(tmp_path: Path) -> None:
    argv = qemu_argv(_config(tmp_path), binary="qemu")
    assert _values(argv, "-vga") == ["none"]
    assert {"virtio-vga", "virtio-tablet-pci"} <= set(_values(argv, "-device"))


@pytest.mark.parametrize("display,expected", [("none", "none"), ("gtk", "gtk"), ("vnc", "vnc=127.0.0.1:0")])
def test_qemu_argv_display_modes(tmp_path: Path, display: str, expected: str) -> None:
    assert _values(qemu_argv(_config(tmp_path, display=display), binary="qemu"), "-display") == [expected]


def test_snapshot_overlay_leaves_the_image_alone(tmp_path: Path) -> None:
    image = tmp_path / "image.raw"
    image.write_bytes(b"\x01" * 65536)
    overlay = create_overlay(image, tmp_path / "overlay.qcow2")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(overlay)], capture_output=True,
                                     check=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == int(qemu.DISK_SIZE.removesuffix("G")) << 30
    assert info["backing-filename"] == str(image.resolve()) and info["backing-filename-format"] == "raw"
    assert image.read_bytes() == b"\x01" * 65536
    with pytest.raises(WeftError, match="does not exist"):
        create_overlay(tmp_path / "missing.raw", tmp_path / "o2.qcow2")


# -- poll ----------------------------------------------------------------------------------


def test_poll_returns_the_first_value() -> None:
    tries = iter([None, None, "ready"])
    assert poll(lambda: next(tries), what="x", timeout=5, interval=0.01) == "ready"


def test_poll_tries_once_more_after_the_deadline_then_reports_diagnostics() -> None:
    calls: list[float] = []

    def never() -> None:
        calls.append(time.monotonic())
        return None

    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"timed out after 0.2 s waiting for the thing\njobs: none"):
        poll(never, what="the thing", timeout=0.2, interval=0.05, diagnose=lambda: "jobs: none")
    assert calls[-1] >= started + 0.2 and len(calls) >= 3


def test_poll_failing_diagnostics_do_not_hide_the_timeout() -> None:
    def broken() -> str:
        raise ConsoleError("console gone")

    with pytest.raises(WaitTimeout, match=r"no diagnostics: console gone"):
        poll(lambda: None, what="x", timeout=0.01, interval=0.01, diagnose=broken)


def test_poll_stops_at_once_when_the_check_raises() -> None:
    def failed() -> None:
        raise MachineError("unit failed")

    started = time.monotonic()
    with pytest.raises(MachineError):
        poll(failed, what="x", timeout=30)
    assert time.monotonic() - started < 1


# -- Machine against a scripted guest -----------------------------------------------------------


class ScriptedGuest:
    """Answers the harness's systemctl queries from a script of ActiveStates (the last repeats)."""

    def __init__(self, states: list[str], *, jobs: bool):
        self.states = states
        self.jobs = jobs
        self.commands: list[str] = []

    def execute(self, command: str, timeout: float) -> Reply:
        self.commands.append(command)
        if command.startswith("systemctl show"):
            state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            return Reply(0, f"ActiveState={state}\nSubState=dead\nLoadState=loaded\n")
        if command.startswith("systemctl list-jobs --no-legend"):
            return Reply(0, "7 weft-x.service start waiting\n" if self.jobs else "")
        if command.startswith("systemctl list-jobs"):
            listing = "JOB UNIT TYPE STATE\n7 weft-x.service start waiting\n"
            return Reply(0, listing if self.jobs else "No jobs running.\n")
        if command.startswith("systemctl status"):
            return Reply(3, "x weft-x.service - X\n     Active: failed (Result: exit-code)\n")
        return Reply(0, "")

    def close(self) -> None:
        pass


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[Callable[[ScriptedGuest], Machine]]:
    machines: list[Machine] = []

    def make(guest: ScriptedGuest) -> Machine:
        machine = Machine(tmp_path / "image.raw", tmp_path, "tcg", name="scripted")
        machine.poll_interval = 0.01
        machine._console = guest  # type: ignore[assignment]  # duck-typed stand-in for TestConsole
        machines.append(machine)
        return machine

    yield make
    for machine in machines:
        machine.close()


def test_wait_for_unit_returns_once_active(scripted: Callable[[ScriptedGuest], Machine]) -> None:
    guest = ScriptedGuest(["inactive", "activating", "activating", "active"], jobs=True)
    scripted(guest).wait_for_unit("weft-x.service", timeout=10)
    assert sum(c.startswith("systemctl show") for c in guest.commands) == 4


def test_wait_for_unit_fails_at_once_on_a_failed_unit(scripted: Callable[[ScriptedGuest], Machine]) -> None:
    machine = scripted(ScriptedGuest(["activating", "failed"], jobs=True))
    started = time.monotonic()
    with pytest.raises(MachineError, match=r"(?s)unit weft-x.service is failed.*list-jobs.*Active: failed"):
        machine.wait_for_unit("weft-x.service", timeout=300)
    assert time.monotonic() - started < 5


def test_wait_for_unit_fails_at_once_when_inactive_with_no_job(scripted: Callable[[ScriptedGuest], Machine]) -> None:
    machine = scripted(ScriptedGuest(["inactive"], jobs=False))
    started = time.monotonic()
    with pytest.raises(MachineError, match="inactive with no job pending"):
        machine.wait_for_unit("weft-x.service", timeout=300)
    assert time.monotonic() - started < 5


def test_wait_for_unit_timeout_logs_diagnostics(scripted: Callable[[ScriptedGuest], Machine]) -> None:
    machine = scripted(ScriptedGuest(["activating"], jobs=True))
    with pytest.raises(WaitTimeout, match=r"(?s)unit weft-x.service to be active.*start waiting.*Active: failed"):
        machine.wait_for_unit("weft-x.service", timeout=0.2)
    actions = machine.actions_log.read_text()
    assert "wait for unit weft-x.service to be active" in actions
    assert "timed out after 0.2 s" in actions and "$ systemctl list-jobs --no-pager" in actions


def test_wait_for_unit_quotes_the_unit_name(scripted: Callable[[ScriptedGuest], Machine]) -> None:
    guest = ScriptedGuest(["failed"], jobs=True)
    with pytest.raises(MachineError):
        scripted(guest).wait_for_unit("x.service; touch /pwned", timeout=10)
    assert guest.commands[0].endswith("-- 'x.service; touch /pwned'")
    assert all("; touch /pwned'" in c for c in guest.commands if "pwned" in c)


def test_every_action_reaches_the_actions_log(scripted: Callable[[ScriptedGuest], Machine],
                                              caplog: pytest.LogCaptureFixture) -> None:
    machine = scripted(ScriptedGuest(["active"], jobs=False))
    machine.note("=== test_something")
    machine.succeed("echo hi")
    machine.wait_for_unit("weft-x.service", timeout=10)
    lines = machine.actions_log.read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in lines[:3]] == ["=== test_something", "$ echo hi", "exit 0 after 0.0 s"]
    assert any("done: unit weft-x.service to be active" in line for line in lines)
    assert "$ echo hi" in caplog.messages  # also in the test's own log


def test_context_manager_kills_qemu_and_keeps_the_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    machine = Machine(tmp_path / "image.raw", tmp_path, "tcg", name="cm")

    def fake_start() -> None:
        machine._process = spawn(["sleep", "60"])
        machine.note("started a stand-in for QEMU")

    monkeypatch.setattr(machine, "start", fake_start)
    with pytest.raises(RuntimeError), machine:
        process = machine._process
        assert process is not None and machine.running
        raise RuntimeError("the test failed")
    assert process is not None and process.poll() is not None and not machine.running
    actions = machine.actions_log.read_text()
    assert "started a stand-in" in actions and "kill: QEMU" in actions
    assert machine.log.handlers == []


def test_a_machine_that_cannot_start_closes_its_log(tmp_path: Path) -> None:
    machine = Machine(tmp_path / "missing.raw", tmp_path, "tcg", name="nostart")
    with pytest.raises(WeftError, match="does not exist"), machine:
        pass
    assert "start:" in machine.actions_log.read_text() and machine.log.handlers == []
    assert not os.path.exists(tmp_path / "nostart-disk.qcow2")


# -- Machine against a stand-in QEMU (tests/fake_qemu.py) ----------------------------------------


@pytest.fixture
def fake_machine(short_dir: Path, fake_ovmf: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Machine]]:
    """Machines whose QEMU is fake_qemu.py, given the real command line; `make(*fake_options,
    **machine_options)`."""
    options: list[str] = []

    def argv(config: VmConfig) -> list[str]:
        return [sys.executable, str(FAKE_QEMU), *options, "--", *qemu_argv(config, binary="qemu")]

    monkeypatch.setattr("weft.vm.machine.qemu_argv", argv)
    image = short_dir / "image.raw"
    image.write_bytes(b"\0" * 65536)
    machines: list[Machine] = []

    def make(*fake_options: str, test_console: bool = True, secure_boot: bool = False) -> Machine:
        options[:] = fake_options
        machine = Machine(image, short_dir, "tcg", name="fake", test_console=test_console, secure_boot=secure_boot)
        machine.poll_interval = 0.05
        machines.append(machine)
        return machine

    yield make
    for machine in machines:
        machine.close()


def _guest_reboots_by_itself(machine: Machine) -> None:
    assert machine._process is not None
    os.kill(machine._process.pid, signal.SIGUSR1)


@pytest.mark.parametrize("drop_console", [False, True], ids=["console-kept", "console-dropped"])
def test_reboot_waits_for_the_reset_and_the_shell_again(fake_machine: Callable[..., Machine],
                                                        drop_console: bool) -> None:
    with fake_machine(*(["--drop-console"] if drop_console else [])) as machine:
        machine.wait_for_shell(10)
        assert "Linux version fake (boot 1)" in machine.serial_text()
        start = machine.reboot(timeout=20)
        assert machine.succeed("echo back") == "back\n"
        assert "Linux version fake (boot 2)" in machine.serial_text()
        assert "boot 1" not in machine.serial_text() and "Restarting system" not in machine.serial_text()
        assert machine.serial_text() == machine.serial_text(since=start)
        assert "boot 1)" in machine.serial_text(since=0)  # the whole log is still there
        with pytest.raises(WaitTimeout):
            machine.wait_for_console(r"boot 1\)", timeout=0.3)  # a line of the boot before
        actions = machine.actions_log.read_text()
        assert "guest reset (guest-reset)" in actions
        assert ("test console closed; connecting again" in actions) == drop_console


def test_guest_initiated_reboot_after_a_mark(fake_machine: Callable[..., Machine]) -> None:
    with fake_machine() as machine:
        machine.wait_for_shell(10)
        mark = machine.serial_mark()
        _guest_reboots_by_itself(machine)
        start = machine.wait_for_reboot(20, since=mark)
        assert start >= mark
        assert machine.succeed("echo up") == "up\n"
        machine.wait_for_console(r"Linux version fake \(boot 2\)", timeout=5, since=start)
        # That reset is spent: the next wait (from the current boot) wants another one.
        with pytest.raises(WaitTimeout, match="reset"):
            machine.wait_for_reset(timeout=0.5)


def test_a_reset_before_the_mark_does_not_count(fake_machine: Callable[..., Machine]) -> None:
    with fake_machine() as machine:
        machine.wait_for_shell(10)
        _guest_reboots_by_itself(machine)
        machine.wait_for_console(r"Linux version fake \(boot 2\)", timeout=10)
        mark = machine.serial_mark()  # after a reset that no wait has taken yet
        with pytest.raises(WaitTimeout, match="reset"):
            machine.wait_for_reset(timeout=0.5, since=mark)
        assert machine.wait_for_reset(timeout=5) <= mark  # it still counts from the boot's start


def test_reboot_without_the_shell_returns_where_the_next_boot_starts(fake_machine: Callable[..., Machine]) -> None:
    with fake_machine("--boot-delay", "1") as machine:
        machine.wait_for_shell(10)
        start = machine.reboot(timeout=20, shell=False)
        machine.wait_for_console(r"Linux version fake \(boot 2\)", timeout=10, since=start)
        assert "boot 1)" not in machine.serial_text(since=start)


def test_a_machine_keeps_its_efi_vars_with_its_disk(fake_machine: Callable[..., Machine], fake_ovmf: Path) -> None:
    machine = fake_machine(secure_boot=True, test_console=False)
    efi_vars = machine.config.efi_vars
    machine.start()
    cmdline = (machine.workdir / "fake-qemu.cmdline").read_text()
    assert "q35,smm=on" in cmdline and str(fake_ovmf / "secboot.fd") in cmdline
    assert efi_vars.read_bytes() == b"EMPTY"  # setup mode
    efi_vars.write_bytes(b"ENROLLED")  # as systemd-boot does on the first boot
    _guest_reboots_by_itself(machine)
    machine.wait_for_reset(timeout=10)
    assert machine.config.efi_vars == efi_vars and efi_vars.read_bytes() == b"ENROLLED"
    machine.shutdown(timeout=10)
    machine.start()  # the same disk: the same variables
    assert efi_vars.read_bytes() == b"ENROLLED"
    machine.shutdown(timeout=10)
    machine.config.disk.unlink()
    machine.start()  # a fresh disk: fresh variables
    assert efi_vars.read_bytes() == b"EMPTY"
    machine.shutdown(timeout=10)


def test_a_secure_boot_machine_without_the_firmware_does_not_start(fake_machine: Callable[..., Machine],
                                                                    fake_ovmf: Path) -> None:
    (fake_ovmf / "secboot.fd").unlink()
    machine = fake_machine(secure_boot=True, test_console=False)
    with pytest.raises(WeftError, match=r"install the ovmf package \(bash ci/setup\.sh\)"), machine:
        pass
    assert not machine.running


def test_vm_run_keeps_the_efi_vars_with_its_kept_disk(tmp_path: Path, fake_ovmf: Path) -> None:
    from weft.vm.run import _disk_and_vars

    image = tmp_path / "weft.raw"
    image.write_bytes(b"\0" * 65536)
    disk, efi_vars = _disk_and_vars(image, tmp_path, snapshot=False, secure_boot=True)
    assert (disk, efi_vars) == (tmp_path / "weft.raw.vm.qcow2", tmp_path / "weft.raw.vm.efivars.fd")
    efi_vars.write_bytes(b"ENROLLED")
    assert _disk_and_vars(image, tmp_path, snapshot=False, secure_boot=True)[1].read_bytes() == b"ENROLLED"
    os.utime(image, (time.time() + 10, time.time() + 10))  # rebuilt: a fresh disk, fresh variables
    assert _disk_and_vars(image, tmp_path, snapshot=False, secure_boot=True)[1].read_bytes() == b"EMPTY"
    efi_vars.write_bytes(b"ENROLLED")
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    assert _disk_and_vars(image, snapshot, snapshot=True, secure_boot=True) == (snapshot / "disk.qcow2",
                                                                                 snapshot / "efivars.fd")
    assert (snapshot / "efivars.fd").read_bytes() == b"EMPTY" and efi_vars.read_bytes() == b"ENROLLED"


def test_boots_since_reads_each_boots_roothash_from_the_kernel_command_line(tmp_path: Path) -> None:
    machine = Machine(tmp_path / "image.raw", tmp_path, "tcg", name="boots")
    one, two = "a" * 64, "b" * 64
    machine.serial_log.write_text(
        f"[    0.000000] Command line: roothash={one} console=ttyS0\n"
        f"[    1.2] Kernel command line: roothash={one} console=ttyS0\n"  # the same boot, later
        "BdsDxe: loading Boot0001\n")
    mark = machine.serial_mark()
    with open(machine.serial_log, "a") as log:
        log.write(f"[    0.000000] Command line: roothash={two} console=ttyS0\n"
                  f"[    0.000000] Command line: console=ttyS0 roothash={one}\n")
    try:
        assert machine.boots_since(0) == [one, two, one]
        assert machine.boots_since(mark) == [two, one]
    finally:
        machine.close()


def test_a_command_line_cut_short_never_swallows_the_next_one() -> None:
    # Input sent while the guest reboots may reach the new shell with its start flushed away
    # (seen: bash left inside an open quote, deaf to every later line). Run each possible tail
    # of a framed line, then a whole one, through bash as the guest's test shell runs it: the
    # whole one must be answered, or bash must have stopped at a syntax error (its unit
    # restarts it; the harness sends again).
    line, good = frame_command("echo 'x y' \"$HOME\" <<<in; exit 4", "cut1"), frame_command("echo ok", "good2")
    assert "'" not in line and '"' not in line and "<<" not in line
    for cut in range(0, len(line), 3):
        shell = subprocess.run(["bash", "--noprofile", "--norc", "-s"], input=f"{line[cut:]}\n{good}\n".encode(),
                               capture_output=True, timeout=30)
        reply = ReplyParser("good2").feed(shell.stdout)
        assert reply == Reply(status=0, output="ok\n") or b"syntax error" in shell.stderr, (cut, shell.stderr)
