"""Apps run only from verified images, as a user sees it (issue 8): the weft user launches apps
through weft-appd with weft-appctl in the booted image, and weft-appd has them mounted by
weft-mountd. tests/vm/test_mountd.py covers the helper itself (every tamper case, references,
reconcile, cost); here is what reaches people: launches, IPC, refusals with their reason and
exit code, and nothing left behind.

Test images are built on the host from the counter example under test-only app ids, signed
with the committed test key the test image trusts (or another key), and pushed in through the
test console. weft-appd's READY timeout is raised for this module: under TCG the first compile
of the 18 MB notes component takes longer than the default 30 s (docs/mountd.md).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from vm_support import AS_WEFT, MOUNTS, SharedMachine, leftovers

from weft.daemons.appctl import LAUNCH_EXIT_CODES
from weft.image import guests
from weft.pack.footer import read_footer
from weft.pack.image import build_image
from weft.pack.keys import generate_keypair, load_signing_key
from weft.vm.machine import Machine
from weft.vm.poll import poll
from weft.vm.transfer import push, push_tree

REPO = Path(__file__).resolve().parents[2]
TEST_KEY = REPO / "tests/vm/keys/weft-test.key"
# How the weft user reaches appd: the unit's environment (User=weft, HOME from passwd).
APPD = "weft-appd.service"
READY_TIMEOUT_S = 900
DROP_IN = "/run/systemd/system/weft-appd.service.d/50-test-ready-timeout.conf"
SYSTEM_IMAGES = "/usr/share/weft/images"
STORE = "/var/lib/weft/images"
USER_PACKAGES = "/var/lib/weft/apps"  # made by tmpfiles.d; weft-pack's own store is under ~/.local/share
APP_DATA = "/var/lib/weft/.local/share/weft/app-data"
COUNTER, NOTES = "org.weft.demo.counter", "org.weft.demo.notes"
# Test-only ids, none a prefix of another (leftovers are matched by id).
INSTALLED, PLANTED, TAMPERED, ROLLED_BACK = ("org.weft.test.installed", "org.weft.test.planted",
                                             "org.weft.test.tampered", "org.weft.test.rolledback")
PADDING_MARKER = b"weft-vm-verified-apps-padding"
# The stable exit codes of `weft-appctl launch` (docs/platform.md): part of the interface.
EXIT = {"not_installed": 10, "unknown_key": 11, "corrupted": 13, "rollback": 14, "bad_image": 15}


def test_exit_codes_are_the_documented_ones() -> None:
    assert {reason: LAUNCH_EXIT_CODES[reason] for reason in EXIT} == EXIT


# -- the guest side ----------------------------------------------------------------------------

def appctl(machine: Machine, args: str, timeout: float = 180) -> tuple[int, str]:
    return machine.execute(f"{AS_WEFT} weft-appctl {args}", timeout=timeout)


def launch(machine: Machine, app_id: str, ready_timeout: float = 120) -> int:
    output = machine.succeed(f"{AS_WEFT} weft-appctl launch {app_id} --wait-ready --timeout {ready_timeout:g}",
                             timeout=ready_timeout + 60)
    return int(output.split()[0])


def refused(machine: Machine, app_id: str, reason: str, *, wait_ready: bool = False) -> str:
    """Launch `app_id`, which must fail with `reason` and its exit code; returns the message."""
    status, output = appctl(machine, f"launch {app_id}" + (" --wait-ready --timeout 120" if wait_ready else ""))
    assert status == EXIT[reason], (status, output)
    match = re.search(rf"^error: {re.escape(app_id)}: {reason}: (.+)$", output, re.M)
    assert match, output
    return match.group(1)


def send(machine: Machine, session: int, payload: str, expect: object) -> None:
    """Send `payload` to the app and wait for the reply `expect` (parsed JSON). The app's window,
    which the desktop opens for every session, talks to the app too (the counter's page sends
    `get`, the notes page `load`), and its replies share the session's mailbox: skip those."""
    machine.succeed(f"{AS_WEFT} weft-appctl send {session} '{payload}'")
    seen = []
    for _ in range(5):
        reply = machine.succeed(f"{AS_WEFT} weft-appctl recv {session} --timeout 60").strip()
        if json.loads(reply) == expect:
            return
        seen.append(reply)
    raise AssertionError(f"no reply {expect!r} to {payload!r} among {seen}")


def running(machine: Machine) -> dict[str, object]:
    reply: dict[str, object] = json.loads(machine.succeed(f"{AS_WEFT} weft-appctl --json ps"))
    return reply


def stop(machine: Machine, session: int) -> None:
    """Stop a session and wait until appd has torn it down (its mount reference dropped)."""
    machine.succeed(f"{AS_WEFT} weft-appctl stop {session}")

    def gone() -> bool | None:
        sessions = running(machine)["sessions"]
        assert isinstance(sessions, list)
        return True if all(s["session_id"] != session for s in sessions) else None

    poll(gone, what=f"session {session} to end", timeout=120, interval=1)


def runtime_pid(machine: Machine, session: int) -> int:
    log = machine.succeed(f"journalctl -u {APPD} --no-pager -o cat")
    pids = re.findall(rf"^weft-appd INFO session {session}: \S+ in runtime (\d+)$", log, re.M)
    assert pids, log[-3000:]
    return int(pids[-1])


def nothing_left_of(machine: Machine, app_id: str, timeout: float = 15) -> None:
    """No dm device, loop device, mount or mount point of `app_id` (others may be in use)."""
    named = re.compile(rf"(^|[-/\s]){re.escape(app_id)}($|\.wapp|\s)")
    deadline = time.monotonic() + timeout
    while True:
        left = "\n".join(line for line in leftovers(machine).splitlines() if named.search(line))
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert left == "", f"left behind:\n{left}"


def image_info(machine: Machine, path: str) -> dict[str, str]:
    info: dict[str, str] = json.loads(machine.succeed(f"weft-pack info --json {path}"))
    return info


# -- images built on the host -------------------------------------------------------------------

@dataclass
class Builder:
    work: Path
    package: Path  # the built counter example
    key: SigningKey
    counter: int = 0

    def package_as(self, app_id: str, version: str = "1.0.0", wasm_padding: bytes = b"") -> Path:
        """The counter example as `app_id`; `wasm_padding` goes into a custom section at the end of
        its component, which makes app.wasm span many blocks (the component stays valid)."""
        self.counter += 1
        package = self.work / "src" / str(self.counter) / app_id
        shutil.copytree(self.package, package)
        manifest = package / "wapp.toml"
        text = re.sub(r'(?m)^id = ".*"', f'id = "{app_id}"', manifest.read_text())
        manifest.write_text(re.sub(r'(?m)^version = ".*"', f'version = "{version}"', text))
        if wasm_padding:
            with open(package / "app.wasm", "ab") as wasm:
                wasm.write(_custom_section(b"weft-padding", wasm_padding))
        return package

    def image(self, app_id: str, version: str = "1.0.0", key: SigningKey | None = None,
              wasm_padding: bytes = b"") -> bytes:
        package = self.package_as(app_id, version, wasm_padding)
        out = self.work / f"{self.counter}.wapp"
        return build_image(package, key or self.key, out, progress=lambda _message: None).read_bytes()


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _custom_section(name: bytes, data: bytes) -> bytes:
    body = _leb128(len(name)) + name + data
    return b"\x00" + _leb128(len(body)) + body


def _hash_offset(image: bytes, work: Path) -> int:
    path = work / "footer-probe.wapp"
    path.write_bytes(image)
    return read_footer(path).footer.verity.hash_offset


@pytest.fixture(scope="module")
def builder(tmp_path_factory: pytest.TempPathFactory) -> Builder:
    work = tmp_path_factory.mktemp("verified-apps")
    key_file = work / "weft-test.key"
    shutil.copyfile(TEST_KEY, key_file)
    os.chmod(key_file, 0o600)  # a private key others can read is refused
    package = guests.build_package(REPO / "examples/org.weft.demo.counter", work / "built", guests.repo_cache(REPO))
    return Builder(work=work, package=package, key=load_signing_key(key_file))


# -- the booted image ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def guest(shared_vm: SharedMachine) -> Iterator[Machine]:
    """appd with a READY timeout that a first compile under TCG fits in; restored afterwards."""
    machine = shared_vm.get()
    machine.wait_for_unit("weft-mountd.socket")
    machine.succeed(f"mkdir -p {os.path.dirname(DROP_IN)} && "
                    f"printf '[Service]\\nEnvironment=WEFT_READY_TIMEOUT_S={READY_TIMEOUT_S}\\n' > {DROP_IN}")
    machine.succeed(f"systemctl daemon-reload && systemctl restart {APPD}", timeout=300)
    machine.wait_for_unit(APPD)
    yield machine
    machine.execute(f"rm -rf {STORE}/org.weft.test.* /tmp/*.wapp {USER_PACKAGES}/{PLANTED}")
    machine.execute(f"{AS_WEFT} weft-pack uninstall {PLANTED}")
    machine.succeed(f"rm -f {DROP_IN} && systemctl daemon-reload && systemctl restart {APPD}", timeout=300)
    machine.wait_for_unit(APPD)


@pytest.mark.parametrize("app_id", [COUNTER, NOTES])
def test_a_shipped_app_runs_from_its_verified_image(guest: Machine, app_id: str) -> None:
    image = f"{SYSTEM_IMAGES}/{app_id}.wapp"
    info = image_info(guest, image)
    assert app_id in guest.succeed(f"{AS_WEFT} weft-appctl apps")
    started = time.monotonic()
    session = launch(guest, app_id, READY_TIMEOUT_S)
    print(f"{app_id}: READY {time.monotonic() - started:.1f} s after the launch (weft-appctl included)")
    try:
        # device-mapper: a verity target over the shipped image, with the image's signed root hash.
        table = guest.succeed(f"dmsetup table weft-app-{app_id}")
        assert re.fullmatch(rf"0 \d+ verity 1 7:(\d+) 7:\1 4096 4096 \d+ \d+ sha256 {info['root_hash']} [0-9a-f]+\s*",
                            table), table
        assert guest.succeed(f"dmsetup status weft-app-{app_id}").split()[3] == "V"
        assert image in guest.succeed(f"losetup -ln -O BACK-FILE -j {image}")
        # The runtime: appd handed it the mount, which its own mount namespace (appd's, with
        # ProtectSystem= and PrivateTmp=) sees, though weft-mountd mounted it after appd started.
        pid = runtime_pid(guest, session)
        log = guest.succeed(f"journalctl -u {APPD} --no-pager -o cat")
        assert f"verified image {image} (root hash {info['root_hash'][:16]}…) mounted at {MOUNTS}/{app_id}" in log
        dm = guest.succeed(f"dmsetup info -c --noheadings -o major,minor weft-app-{app_id}").strip()
        seen = guest.succeed(f"findmnt -N {pid} -n -o MAJ:MIN,FSTYPE,OPTIONS {MOUNTS}/{app_id}").split()
        assert seen[0] == dm and seen[1] == "erofs", (seen, dm)
        assert {"ro", "nosuid", "nodev", "noexec"} <= set(seen[2].split(","))
        assert guest.succeed(f"readlink /proc/{pid}/ns/mnt") != guest.succeed("readlink /proc/1/ns/mnt")
        # Its component was read through the verity device: at least that many bytes came through it.
        wasm_bytes = int(guest.succeed(f"stat -c %s {MOUNTS}/{app_id}/app.wasm"))
        dm_dev = guest.succeed(f"basename $(readlink -f /dev/mapper/weft-app-{app_id})").strip()
        sectors_read = int(guest.succeed(f"cat /sys/block/{dm_dev}/stat").split()[2])
        assert sectors_read * 512 >= wasm_bytes, (sectors_read, wasm_bytes)
        # IPC works.
        if app_id == COUNTER:
            send(guest, session, "increment", {"count": 1})
        else:
            text = f"saved in the VM {time.time_ns()}"
            send(guest, session, json.dumps({"op": "save", "text": text, "rev": 7}), {"saved": 7})
            send(guest, session, '{"op":"load"}', {"text": text})
            # The note is app data: outside the image, bound to the key that signed it.
            assert guest.succeed(f"cat {APP_DATA}/{app_id}/{info['publisher']}/notes.txt") == text
    finally:
        stop(guest, session)
    nothing_left_of(guest, app_id)


def test_an_installed_image_is_launched_from_the_state_partition(guest: Machine, builder: Builder) -> None:
    push(guest, builder.image(INSTALLED), f"/tmp/{INSTALLED}.wapp")
    out = guest.succeed(f"weft-pack install /tmp/{INSTALLED}.wapp")
    assert f"installed {INSTALLED} 1.0.0" in out and f"{STORE}/{INSTALLED}.wapp" in out, out
    assert INSTALLED in guest.succeed(f"{AS_WEFT} weft-appctl apps")
    session = launch(guest, INSTALLED)
    try:
        assert " verity " in guest.succeed(f"dmsetup table weft-app-{INSTALLED}")
        assert f"{STORE}/{INSTALLED}.wapp" in guest.succeed(f"losetup -ln -O BACK-FILE -j {STORE}/{INSTALLED}.wapp")
        send(guest, session, "increment", {"count": 1})
    finally:
        stop(guest, session)
    nothing_left_of(guest, INSTALLED)


def test_a_package_directory_in_a_store_is_not_launched(guest: Machine, builder: Builder) -> None:
    """A complete, valid package directory (weft-pack lists it) is never what appd runs."""
    pushed = push_tree(guest, builder.package_as(PLANTED), "/tmp/planted")
    guest.succeed(f"chmod -R a+rX /tmp/planted && {AS_WEFT} weft-pack install {pushed}")
    guest.succeed(f"cp -r {pushed} {USER_PACKAGES}/ && chown -R weft:weft {USER_PACKAGES}/{PLANTED}")
    assert re.search(rf"^{re.escape(PLANTED)} .* directory \(user\)$",
                     guest.succeed(f"{AS_WEFT} weft-pack list"), re.M)
    assert PLANTED not in guest.succeed(f"{AS_WEFT} weft-appctl apps")
    message = refused(guest, PLANTED, "not_installed")
    assert message == f"{PLANTED} is not installed (no {PLANTED}.wapp in {SYSTEM_IMAGES} or {STORE})", message
    # Dropped into the image store, under the image's name or its own: not an image either.
    guest.succeed(f"cp -r {pushed} {STORE}/{PLANTED}.wapp")
    message = refused(guest, PLANTED, "bad_image")
    assert f"{STORE}/{PLANTED}.wapp" in message, message
    guest.succeed(f"rm -rf {STORE}/{PLANTED}.wapp && cp -r {pushed} {STORE}/{PLANTED}")
    refused(guest, PLANTED, "not_installed")
    guest.succeed(f"rm -rf {STORE}/{PLANTED}")
    nothing_left_of(guest, PLANTED)


class TestTamperedImages:
    """As an attacker with write access to the state partition: each tampered image is refused
    with its own reason and exit code, nothing of it stays mounted, and a good app launched
    alongside keeps working."""

    @pytest.fixture(scope="class")
    @classmethod
    def alongside(cls, guest: Machine) -> Iterator[Callable[[], None]]:
        session = launch(guest, COUNTER)
        count = 0

        def still_works() -> None:
            nonlocal count
            count += 1
            send(guest, session, "increment", {"count": count})

        still_works()
        yield still_works
        still_works()
        stop(guest, session)
        nothing_left_of(guest, COUNTER)

    def plant(self, guest: Machine, data: bytes) -> None:
        """Behind the store's back: straight into the image store, as root."""
        push(guest, data, f"{STORE}/{TAMPERED}.wapp")

    def test_garbage(self, guest: Machine, alongside: Callable[[], None]) -> None:
        self.plant(guest, os.urandom(20_000))
        message = refused(guest, TAMPERED, "bad_image")
        assert f"{STORE}/{TAMPERED}.wapp" in message, message
        nothing_left_of(guest, TAMPERED)
        alongside()

    def test_untrusted_key(self, guest: Machine, builder: Builder, alongside: Callable[[], None]) -> None:
        stranger, _ = generate_keypair(builder.work / "stranger")
        data = builder.image(TAMPERED, key=load_signing_key(stranger))
        push(guest, data, f"/tmp/{TAMPERED}.wapp")
        assert "wrong key" in guest.fail(f"weft-pack install /tmp/{TAMPERED}.wapp")  # refused at install
        self.plant(guest, data)
        message = refused(guest, TAMPERED, "unknown_key")
        assert f"{STORE}/{TAMPERED}.wapp" in message, message
        nothing_left_of(guest, TAMPERED)
        alongside()

    def test_flipped_data_byte_ends_the_session_naming_the_image(self, guest: Machine, builder: Builder,
                                                                 alongside: Callable[[], None]) -> None:
        """The signature covers only the root hash: dm-verity finds the byte when the runtime reads
        the component (EIO), and the session ends with the corruption, naming the image."""
        good = builder.image(TAMPERED, wasm_padding=PADDING_MARKER + os.urandom(300_000))
        offset = good.index(PADDING_MARKER) + 200_000  # inside app.wasm, far from block 0 (which activation reads)
        assert 4096 <= offset < _hash_offset(good, builder.work)
        data = good[:offset] + bytes([good[offset] ^ 0x01]) + good[offset + 1:]
        push(guest, data, f"/tmp/{TAMPERED}.wapp")
        assert "tampered data" in guest.fail(f"weft-pack install /tmp/{TAMPERED}.wapp")  # refused at install
        self.plant(guest, data)
        message = refused(guest, TAMPERED, "corrupted", wait_ready=True)
        assert re.fullmatch(rf"session (\d+) ended: dm-verity detected corruption in {STORE}/{TAMPERED}\.wapp",
                            message), message
        session = int(message.split()[1])
        ended = running(guest)["ended_with_error"]
        assert isinstance(ended, list)
        assert {"session_id": session, "app_id": TAMPERED, "reason": "corrupted",
                "error": f"dm-verity detected corruption in {STORE}/{TAMPERED}.wapp"} in ended, ended
        assert f"session {session}: dm-verity detected corruption in {STORE}/{TAMPERED}.wapp" in guest.succeed(
            f"journalctl -u {APPD} --no-pager -o cat")
        nothing_left_of(guest, TAMPERED)
        alongside()

    def test_rollback(self, guest: Machine, builder: Builder, alongside: Callable[[], None]) -> None:
        newer, older = builder.image(ROLLED_BACK, "2.0.0"), builder.image(ROLLED_BACK, "1.0.0")
        push(guest, newer, f"/tmp/{ROLLED_BACK}-2.wapp")
        guest.succeed(f"weft-pack install /tmp/{ROLLED_BACK}-2.wapp")
        stop(guest, launch(guest, ROLLED_BACK))  # 2.0.0 ran here: the device records it
        nothing_left_of(guest, ROLLED_BACK)
        push(guest, older, f"/tmp/{ROLLED_BACK}-1.wapp")
        assert "older than version 2.0.0" in guest.fail(f"weft-pack install /tmp/{ROLLED_BACK}-1.wapp")
        push(guest, older, f"{STORE}/{ROLLED_BACK}.wapp")  # behind the store's back
        message = refused(guest, ROLLED_BACK, "rollback")
        assert "2.0.0" in message and f"{STORE}/{ROLLED_BACK}.wapp" in message, message
        nothing_left_of(guest, ROLLED_BACK)
        alongside()
