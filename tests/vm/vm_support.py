"""What several VM tests do in the guest: push files in through the test console, and look for
what weft-mountd might leave behind (dm devices, loop devices, mounts, mount points)."""
from __future__ import annotations

import base64
import io
import tarfile
import time
from pathlib import Path
from typing import Protocol

from weft.vm.machine import Machine

CHUNK = 2000  # base64 characters per console command (the console line limit is 3500)
MOUNTS = "/run/weft/apps"


class SharedMachine(Protocol):
    """conftest's `shared_vm` fixture (session scope), for module-scoped fixtures: the function-scoped
    `machine` fixture cannot be used there."""

    def get(self) -> Machine: ...


def push(machine: Machine, data: bytes, remote: str) -> None:
    """Write `data` to the guest file `remote` (replaced if it exists)."""
    encoded = base64.b64encode(data).decode()
    machine.succeed(f"rm -f {remote}.b64")
    for i in range(0, len(encoded), CHUNK):
        machine.succeed(f"printf %s '{encoded[i:i + CHUNK]}' >> {remote}.b64")
    machine.succeed(f"base64 -d {remote}.b64 > {remote} && rm {remote}.b64")


def push_tree(machine: Machine, local: Path, guest_dir: str) -> str:
    """Copy the directory `local` into the guest as `guest_dir`/<its name>; returns that path."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(local, arcname=local.name)
    machine.succeed(f"rm -rf {guest_dir}/{local.name} && mkdir -p {guest_dir}")
    push(machine, buffer.getvalue(), f"{guest_dir}/.push.tar.gz")
    machine.succeed(f"tar -xzf {guest_dir}/.push.tar.gz -C {guest_dir} && rm {guest_dir}/.push.tar.gz")
    return f"{guest_dir}/{local.name}"


def leftovers(machine: Machine) -> str:
    """weft dm devices, loop devices over image store files, mounts and entries under /run/weft/apps."""
    return machine.succeed(
        "{ dmsetup ls | grep '^weft-app-' ; losetup -ln -O NAME,BACK-FILE | grep '/weft/images/' ; "
        f"findmnt -rn -o TARGET | grep '^{MOUNTS}/' ; ls -A {MOUNTS} ; }} || true").strip()


def assert_nothing_left(machine: Machine, timeout: float = 10, keep: tuple[str, ...] = ()) -> None:
    """Nothing of weft-mountd's is left, except lines naming an app in `keep` (still in use).
    Loop devices autoclear asynchronously after the dm device goes: allow a moment."""
    deadline = time.monotonic() + timeout
    while True:
        left = "\n".join(line for line in leftovers(machine).splitlines() if not any(app in line for app in keep))
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert left == "", f"left behind:\n{left}"
