"""Files into a booted test VM through its test console (no network, no shared folder).

The console takes one line per command, so the data travels base64-encoded in chunks appended
to a file in the guest, then decoded there. Fine for what tests push (images of some 10-300 KB,
scripts); about 2 KB of data per command.
"""
from __future__ import annotations

import base64
import io
import tarfile
from pathlib import Path

from weft.vm.machine import Machine

CHUNK = 2000  # base64 characters per console command (the console line limit is 3500)


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
