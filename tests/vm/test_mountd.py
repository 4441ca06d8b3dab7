"""weft-mountd in the booted image, with the real kernel: loop + dm-verity + EROFS, the tamper
matrix as an attacker with write access to the state partition would run it, references,
reconcile after SIGKILL, the peer check, cost and the unit's exposure (docs/mountd.md).

Images are built on the host from the counter example under test-only app ids (so the
image's shipped apps never shadow them) and signed with the test key the test image trusts;
the client runs in the guest as the appd user `weft`.
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
from typing import Any

import pytest
from nacl.signing import SigningKey
from vm_support import MOUNTS, SharedMachine, assert_nothing_left, leftovers

from weft.image import guests
from weft.pack.footer import FORMAT_VERSION, MAGIC, TRAILER, Footer, SignedFooter, read_footer, seal_footer
from weft.pack.image import build_image
from weft.pack.keys import generate_keypair, load_signing_key
from weft.verity import compute_layout
from weft.vm.machine import Machine
from weft.vm.transfer import push

REPO = Path(__file__).resolve().parents[2]
TEST_KEY = REPO / "tests/vm/keys/weft-test.key"
APP = "org.weft.test.mountd"
ALONGSIDE = "org.weft.test.mountdpeer"
ROLLBACK_APP = "org.weft.test.mountdroll"
STORE = "/var/lib/weft/images"
CLIENT = "/tmp/weft-mountd-client.py"
AS_APPD = "setpriv --reuid=weft --regid=weft --init-groups"
PYTHON = "/usr/lib/weft/venv/bin/python"
BIG_MARKER = b"weft-mountd-big-file-marker"

# Runs in the guest: one connection per invocation; `hold` keeps its reference until
# /tmp/release-<app> appears. A MOUNT_ERROR prints {"reason", "message"} and exits 3.
CLIENT_SOURCE = '''
import json, os, sys, time
from weft.daemons.mountd.client import MountdClient
from weft.daemons.mountd.errors import MountdError
from weft.errors import WeftError
cmd, app = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "")
try:
    with MountdClient() as c:
        if cmd == "mount":
            print(json.dumps(c.mount(app).model_dump(mode="json")))
        elif cmd == "hold":
            reply = c.mount(app).model_dump(mode="json")
            with open(f"/tmp/held-{app}.tmp", "w") as fh:
                fh.write(json.dumps(reply))
            os.rename(f"/tmp/held-{app}.tmp", f"/tmp/held-{app}")
            while not os.path.exists(f"/tmp/release-{app}"):
                time.sleep(0.05)
            print(c.unmount(app))
        elif cmd == "list":
            print(json.dumps([m.model_dump(mode="json") for m in c.list_mounts()]))
        elif cmd == "check":
            print(json.dumps({"corrupted": c.is_corrupted(app)}))
        elif cmd == "claim":  # mount, check, unmount on one connection
            c.mount(app)
            print(json.dumps({"corrupted": c.is_corrupted(app), "remaining": c.unmount(app)}))
        elif cmd == "bench":
            n, mounts, unmounts = int(sys.argv[3]), [], []
            for _ in range(n):
                time.sleep(0.5)  # a launch does not follow the last tear-down within milliseconds
                a = time.perf_counter(); c.mount(app); b = time.perf_counter(); c.unmount(app)
                mounts.append((b - a) * 1000); unmounts.append((time.perf_counter() - b) * 1000)
            mounts.sort(); unmounts.sort()
            p50, p95 = n // 2, -1 - n // 20
            print(json.dumps({"mount_p50_ms": round(mounts[p50]), "mount_p95_ms": round(mounts[p95]),
                              "unmount_p50_ms": round(unmounts[p50]), "unmount_p95_ms": round(unmounts[p95])}))
except MountdError as exc:
    print(json.dumps({"reason": exc.reason.value, "message": str(exc)}))
    sys.exit(3)
except WeftError as exc:
    print(json.dumps({"reason": "connect", "message": str(exc)}))
    sys.exit(4)
'''


def client(machine: Machine, *args: str, as_user: str = AS_APPD) -> tuple[int, Any]:
    status, output = machine.execute(f"{as_user} {PYTHON} {CLIENT} {' '.join(args)}", timeout=180)
    lines = [line for line in output.splitlines() if line.startswith(("{", "["))]
    return status, json.loads(lines[-1]) if lines else {"output": output}


def install(machine: Machine, app_id: str, data: bytes) -> None:
    machine.succeed(f"install -d -m 0755 {STORE} && rm -rf {STORE}/{app_id}.wapp")
    push(machine, data, f"{STORE}/{app_id}.wapp")


@dataclass
class Images:
    good: dict[tuple[str, str], bytes]
    untrusted: bytes
    other_root_hash: bytes
    big: bytes  # APP with a 256 KiB ui/big.bin: blocks far from block 0

    def of(self, app_id: str, version: str = "1.0.0") -> bytes:
        return self.good[(app_id, version)]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    work = tmp_path_factory.mktemp("mountd-images")
    key_file = work / "weft-test.key"
    shutil.copyfile(TEST_KEY, key_file)
    os.chmod(key_file, 0o600)  # a private key others can read is refused
    key = load_signing_key(key_file)
    built = guests.build_package(REPO / "examples/org.weft.demo.counter", work / "built", guests.repo_cache(REPO))

    counter = iter(range(1000))

    def image(app_id: str, version: str, signing_key: SigningKey = key, extra: bytes = b"") -> bytes:
        n = next(counter)
        package = work / "src" / str(n) / app_id
        shutil.copytree(built, package)
        if extra:
            (package / "ui" / "big.bin").write_bytes(extra)
        manifest = package / "wapp.toml"
        text = re.sub(r'(?m)^id = ".*"', f'id = "{app_id}"', manifest.read_text())
        manifest.write_text(re.sub(r'(?m)^version = ".*"', f'version = "{version}"', text))
        return build_image(package, signing_key, work / f"{n}.wapp", progress=lambda _message: None).read_bytes()

    good = {spec: image(*spec) for spec in [(APP, "1.0.0"), (ALONGSIDE, "1.0.0"), (ROLLBACK_APP, "1.0.0"),
                                            (ROLLBACK_APP, "2.0.0")]}
    stranger, _ = generate_keypair(work / "stranger")
    untrusted = image(APP, "1.0.0", load_signing_key(stranger))
    # The test key's valid signature over a footer whose root hash belongs to another image.
    app_path, peer_path = work / "app.wapp", work / "peer.wapp"
    app_path.write_bytes(good[(APP, "1.0.0")])
    peer_path.write_bytes(good[(ALONGSIDE, "1.0.0")])
    signed = read_footer(app_path)
    footer = signed.footer
    forged = footer.model_copy(update={"verity": footer.verity.model_copy(
        update={"root_hash": read_footer(peer_path).footer.verity.root_hash})})
    other_root_hash = good[(APP, "1.0.0")][:footer.footer_offset] + seal_footer(forged, key)
    big = image(APP, "1.0.0", extra=BIG_MARKER + os.urandom(256 * 1024))
    return Images(good=good, untrusted=untrusted, other_root_hash=other_root_hash, big=big)


@pytest.fixture(scope="module")
def guest(shared_vm: SharedMachine) -> Iterator[Machine]:
    machine = shared_vm.get()
    machine.wait_for_unit("weft-mountd.socket")
    push(machine, CLIENT_SOURCE.encode(), CLIENT)
    machine.succeed(f"chmod 0644 {CLIENT}")
    yield machine
    machine.execute(f"rm -f {STORE}/org.weft.test.mountd*.wapp /tmp/held-* /tmp/release-*")


def hold(machine: Machine, app_id: str) -> Callable[[], None]:
    """Mount `app_id` from a background client as the appd user; returns its release."""
    machine.succeed(f"rm -f /tmp/held-{app_id} /tmp/release-{app_id}")
    machine.succeed(f"setsid -f {AS_APPD} {PYTHON} {CLIENT} hold {app_id} > /tmp/hold-{app_id}.log 2>&1 < /dev/null")
    machine.succeed(f"timeout 120 sh -c 'until test -e /tmp/held-{app_id}; do sleep 0.2; done' "
                    f"|| {{ cat /tmp/hold-{app_id}.log; exit 1; }}", timeout=150)

    def release() -> None:
        machine.succeed(f"touch /tmp/release-{app_id}")
        # "[/]tmp/…": the pattern must not match the waiting shell's own command line; "$": nor
        # a holder of another app whose id starts with this one (org.weft.test.mountdpeer).
        pattern = f"[{CLIENT[0]}]{CLIENT[1:]} hold {app_id}$"
        machine.succeed(f"timeout 60 sh -c 'while pgrep -f \"{pattern}\" >/dev/null; do sleep 0.2; done'",
                        timeout=90)

    return release


def test_mount_is_verity_backed_read_only_and_leaves_nothing(guest: Machine, images: Images) -> None:
    install(guest, APP, images.of(APP))
    release = hold(guest, APP)
    try:
        reply = json.loads(guest.succeed(f"cat /tmp/held-{APP}"))
        assert reply["mount_path"] == f"{MOUNTS}/{APP}" and reply["version"] == "1.0.0"
        table = guest.succeed(f"dmsetup table weft-app-{APP}")
        assert re.search(r"^0 \d+ verity 1 7:\d+ 7:\d+ 4096 4096 \d+ \d+ sha256 " + reply["root_hash"], table), table
        assert guest.succeed(f"dmsetup status weft-app-{APP}").split()[3] == "V"
        fstype, options = guest.succeed(f"findmnt -n -o FSTYPE,OPTIONS {MOUNTS}/{APP}").split()
        assert fstype == "erofs" and {"ro", "nosuid", "nodev", "noexec"} <= set(options.split(","))
        assert f'id = "{APP}"' in guest.succeed(f"{AS_APPD} cat {MOUNTS}/{APP}/wapp.toml")
        loop = guest.succeed(f"losetup -ln -O RO,AUTOCLEAR,SIZELIMIT -j {STORE}/{APP}.wapp").split()
        assert loop == ["1", "1", str(_footer(images.of(APP)).footer.footer_offset)], loop
        guest.fail(f"touch {MOUNTS}/{APP}/x")
        listed = client(guest, "list")[1]
        assert [(m["app_id"], m["refs"], m["dm_name"]) for m in listed] == [(APP, 1, f"weft-app-{APP}")]
    finally:
        release()
    assert_nothing_left(guest)


def _footer(data: bytes) -> SignedFooter:
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"weft-mountd-footer-{os.getpid()}.wapp"
    tmp.write_bytes(data)
    try:
        return read_footer(tmp)
    finally:
        tmp.unlink()


def test_a_second_client_shares_the_mount(guest: Machine, images: Images) -> None:
    install(guest, APP, images.of(APP))
    release = hold(guest, APP)
    try:
        status, reply = client(guest, "claim", APP)
        assert status == 0 and reply == {"corrupted": False, "remaining": 1}
        assert guest.succeed(f"findmnt -rn -o TARGET | grep -c '^{MOUNTS}/{APP}$'").strip() == "1"
    finally:
        release()
    assert_nothing_left(guest)


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1:]


def _offsets_elsewhere(good: bytes) -> bytes:
    """A consistent footer that puts the hash area one block earlier, moved accordingly, with the
    original signature: what an attacker without the key can do."""
    signed = _footer(good)
    footer, verity = signed.footer, signed.footer.verity
    blocks = verity.data_blocks - 1
    layout = compute_layout(verity.params(), blocks, blocks * 4096)
    moved = footer.model_copy(update={"data_size": blocks * 4096, "verity": verity.model_copy(update={
        "data_blocks": blocks, "hash_offset": blocks * 4096, "hash_size": layout.end_offset - blocks * 4096})})
    body = moved.encode()
    Footer.model_validate_json(body)  # consistent: only the signature can tell
    return good[:moved.footer_offset] + body + signed.signature + TRAILER.pack(MAGIC, FORMAT_VERSION, len(body))


def _tamper_cases(images: Images) -> dict[str, tuple[bytes, set[str]]]:
    good = images.of(APP)
    return {
        "garbage": (os.urandom(20_000), {"bad_image"}),
        "untrusted key": (images.untrusted, {"unknown_key"}),
        "valid signature over another root hash": (images.other_root_hash, {"corrupted"}),
        "truncated": (good[:-1000], {"bad_image"}),
        "appended bytes": (good + b"\0" * 4096, {"bad_image"}),
        "footer offsets elsewhere": (_offsets_elsewhere(good), {"bad_signature"}),
        "flipped signature byte": (_flip(good, len(good) - 17), {"bad_signature"}),
        "another app's image renamed": (images.of(ALONGSIDE), {"id_mismatch"}),
    }


def _no_app_left(machine: Machine) -> None:
    """Nothing of APP remains (the alongside app stays mounted)."""
    deadline = time.monotonic() + 10
    while True:
        left = "\n".join(line for line in leftovers(machine).splitlines() if ALONGSIDE not in line)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert left == "", f"left behind:\n{left}"


def _refused_or_eio(guest: Machine, probe: str = "wapp.toml") -> None:
    """Either the activation's own read check refuses it (`corrupted`), or it mounts and the
    corrupted block reads as EIO, after which CHECK_APP reports the corruption."""
    status, reply = client(guest, "mount", APP)
    if status == 3:
        assert reply["reason"] == "corrupted", reply
    else:
        release = hold(guest, APP)
        try:
            out = guest.fail(f"{AS_APPD} sh -c 'cat {MOUNTS}/{APP}/* {MOUNTS}/{APP}/{probe} > /dev/null'")
            assert "Input/output error" in out, out
            assert guest.succeed(f"dmsetup status weft-app-{APP}").split()[3] == "C"
            status, reply = client(guest, "mount", APP)
            assert status == 3 and reply["reason"] == "corrupted", reply
        finally:
            release()
    _no_app_left(guest)


class TestTamperMatrix:
    """Each case as an attacker with write access to the state partition would plant it: refused
    with its own reason, nothing left behind, and a good app mounted alongside keeps working."""

    @pytest.fixture(scope="class")
    @classmethod
    def alongside(cls, guest: Machine, images: Images) -> Iterator[None]:
        """A good app mounted for the whole tamper matrix: it must keep working."""
        install(guest, ALONGSIDE, images.of(ALONGSIDE))
        release = hold(guest, ALONGSIDE)
        yield
        assert "counter" in guest.succeed(f"{AS_APPD} cat {MOUNTS}/{ALONGSIDE}/wapp.toml").lower()
        release()
        guest.succeed(f"rm -f {STORE}/{ALONGSIDE}.wapp")

    @pytest.mark.parametrize("case", ["garbage", "untrusted key", "valid signature over another root hash", "truncated",
                                      "appended bytes", "footer offsets elsewhere", "flipped signature byte",
                                      "another app's image renamed"])
    def test_tampered_image_is_refused_and_leaves_nothing(self, guest: Machine, images: Images, alongside: None,
                                                          case: str) -> None:
        data, reasons = _tamper_cases(images)[case]
        install(guest, APP, data)
        status, reply = client(guest, "mount", APP)
        assert status == 3 and reply["reason"] in reasons, reply
        _no_app_left(guest)


    def test_flipped_hash_tree_byte(self, guest: Machine, images: Images, alongside: None) -> None:
        good = images.of(APP)
        hash_offset = _footer(good).footer.verity.hash_offset
        install(guest, APP, _flip(good, hash_offset + 4096 + 5))  # the tree's first block, past the superblock
        _refused_or_eio(guest)


    def test_flipped_byte_far_from_block_zero_fails_at_read(self, guest: Machine, images: Images,
                                                              alongside: None) -> None:
        """Activation reads block 0 only: a bad block elsewhere mounts, then reads as EIO, and
        CHECK_APP (dm-verity status C) reports it; it is never handed out again."""
        offset = images.big.index(BIG_MARKER) + 200_000
        assert offset < _footer(images.big).footer.verity.hash_offset
        install(guest, APP, _flip(images.big, offset))
        release = hold(guest, APP)
        try:
            assert guest.succeed(f"dmsetup status weft-app-{APP}").split()[3] == "V"
            out = guest.fail(f"{AS_APPD} cat {MOUNTS}/{APP}/ui/big.bin > /dev/null")
            assert "Input/output error" in out, out
            assert guest.succeed(f"dmsetup status weft-app-{APP}").split()[3] == "C"
            assert client(guest, "check", APP) == (0, {"corrupted": True})
            status, reply = client(guest, "mount", APP)
            assert status == 3 and reply["reason"] == "corrupted", reply
        finally:
            release()
        _no_app_left(guest)

    def test_flipped_data_byte(self, guest: Machine, images: Images, alongside: None) -> None:
        """The signature covers the root hash only: the kernel finds this, at open or at read."""
        good = images.of(APP)
        offset = good.index(b"\0asm")  # the component's first byte, inside the EROFS data
        assert offset < _footer(good).footer.verity.hash_offset
        install(guest, APP, _flip(good, offset + 8))
        _refused_or_eio(guest, "app.wasm")


    def test_directory_package_planted_in_the_store(self, guest: Machine, alongside: None) -> None:
        guest.succeed(f"rm -rf {STORE}/{APP}.wapp && mkdir -p {STORE}/{APP}.wapp && touch {STORE}/{APP}.wapp/wapp.toml")
        try:
            status, reply = client(guest, "mount", APP)
            assert status == 3 and reply["reason"] == "bad_image", reply
            guest.succeed(f"rm -rf {STORE}/{APP}.wapp && mkdir -p {STORE}/{APP} && touch {STORE}/{APP}/wapp.toml")
            status, reply = client(guest, "mount", APP)
            assert status == 3 and reply["reason"] == "not_installed", reply
        finally:
            guest.succeed(f"rm -rf {STORE}/{APP}.wapp {STORE}/{APP}")
        _no_app_left(guest)


def test_older_version_is_refused_after_a_newer_one_ran(guest: Machine, images: Images) -> None:
    install(guest, ROLLBACK_APP, images.of(ROLLBACK_APP, "2.0.0"))
    status, reply = client(guest, "claim", ROLLBACK_APP)
    assert status == 0, reply
    assert json.loads(guest.succeed("cat /var/lib/weft-mountd/versions.json"))[ROLLBACK_APP] == "2.0.0"
    install(guest, ROLLBACK_APP, images.of(ROLLBACK_APP, "1.0.0"))
    status, reply = client(guest, "mount", ROLLBACK_APP)
    assert status == 3 and reply["reason"] == "rollback" and "2.0.0" in reply["message"], reply
    guest.succeed(f"rm -f {STORE}/{ROLLBACK_APP}.wapp")
    assert_nothing_left(guest)


def test_clients_of_other_uids_get_no_answer(guest: Machine, images: Images) -> None:
    install(guest, APP, images.of(APP))
    status, reply = client(guest, "mount", APP, as_user="")  # root is not appd either
    assert status == 3 and "without an answer" in reply["message"], reply
    status, reply = client(guest, "mount", APP, as_user="setpriv --reuid=nobody --regid=nogroup --clear-groups")
    assert status == 4 and "Permission denied" in reply["message"], reply  # the socket is 0660 root:weft
    assert "refusing a client with uid 0" in guest.succeed("journalctl -u weft-mountd --no-pager -o cat")
    assert_nothing_left(guest)


def test_restart_after_sigkill_adopts_complete_mounts_and_clears_half_set_up_ones(guest: Machine,
                                                                                   images: Images) -> None:
    install(guest, APP, images.of(APP))
    release = hold(guest, APP)
    # What a helper killed half-way would leave: a dm device without a mount, and a stray mount point.
    leftover = "org.weft.test.leftover"
    guest.succeed(f"dmsetup create weft-app-{leftover} --table '0 8 zero' && mkdir -p {MOUNTS}/{leftover}")
    guest.succeed("systemctl kill -s KILL weft-mountd.service")
    guest.succeed("timeout 30 sh -c 'while systemctl is-active -q weft-mountd.service; do sleep 0.2; done'")
    release()  # its connection died with the helper; its release now only ends the client
    listed = client(guest, "list")[1]  # this connection starts the helper again (socket activation)
    assert [(m["app_id"], m["refs"]) for m in listed] == [(APP, 0)], listed
    assert guest.succeed(f"dmsetup ls | grep -c weft-app-{leftover} || true").strip() == "0"
    guest.fail(f"test -e {MOUNTS}/{leftover}")
    status, reply = client(guest, "claim", APP)  # appd claims it again; its release unmounts
    assert status == 0 and reply["remaining"] == 0, reply
    assert_nothing_left(guest)


def test_activation_cost(guest: Machine, images: Images) -> None:
    """The fresh-mount and tear-down cost through the helper (docs/mountd.md, "Measured")."""
    install(guest, APP, images.of(APP))
    client(guest, "claim", APP)  # the helper is up and warm
    status, reply = client(guest, "bench", APP, "15")
    assert status == 0, reply
    print(f"weft-mountd activation in the VM: {json.dumps(reply)}")
    # No exec on this path: one exec alone costs ~70 ms here; three would blow this bound.
    assert reply["mount_p50_ms"] < 400, reply
    assert_nothing_left(guest)


def test_unit_exposure(guest: Machine) -> None:
    report = guest.succeed("systemd-analyze security --no-pager weft-mountd.service")
    score = float(re.search(r"Overall exposure level for weft-mountd.service: ([0-9.]+)", report).group(1))  # type: ignore[union-attr]
    print(f"weft-mountd.service exposure: {score}")
    assert score <= 3.5, report
    assert "CapabilityBoundingSet=~CAP_SYS_ADMIN" in report  # the only capability it keeps
    caps = guest.succeed("systemctl show -p CapabilityBoundingSet --value weft-mountd.service").split()
    assert caps == ["cap_sys_admin"], caps
