"""What several VM tests share: the shared VM for module-scoped fixtures, and a look for what
weft-mountd might leave behind (dm devices, loop devices, mounts, mount points). Files go into
the guest with weft.vm.transfer."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

from weft.vm.machine import Machine

MOUNTS = "/run/weft/apps"
# A guest command prefix: run as the session user, as appd's clients do.
AS_WEFT = "runuser -u weft -- env HOME=/var/lib/weft XDG_RUNTIME_DIR=/run/weft-appd"


class SharedMachine(Protocol):
    """conftest's `shared_vm` fixture (session scope), for module-scoped fixtures: the function-scoped
    `machine` fixture cannot be used there."""

    def get(self) -> Machine: ...


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


def flip_byte(path: Path, offset: int) -> None:
    """Invert every bit of the byte at `offset`, in place."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        original = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([original[0] ^ 0xFF]))
