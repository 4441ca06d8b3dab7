"""Which process is at the other end: the pid of a Wayland client (wl_client credentials) and
the cgroup of a Unix-socket peer. Roles are decided on these, never on what a client says."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pywayland


def resource_pid(resource_ptr: Any) -> int:
    """The pid of the client owning a `struct wl_resource *` (pywayland's or wlroots' cdata)."""
    # pywayland's and wlroots' cffi modules each type their own pointers: go through the address.
    wl_ffi: Any = pywayland.ffi
    wl_lib: Any = pywayland.lib
    resource = wl_ffi.cast("struct wl_resource *", int(wl_ffi.cast("uintptr_t", resource_ptr)))
    client = wl_lib.wl_resource_get_client(resource)
    pid, uid, gid = wl_ffi.new("pid_t *"), wl_ffi.new("uid_t *"), wl_ffi.new("gid_t *")
    wl_lib.wl_client_get_credentials(client, pid, uid, gid)
    return int(pid[0])


def surface_pid(surface: Any) -> int:
    """The pid of the client that owns a wlroots `Surface`."""
    return resource_pid(surface._ptr.resource)


def cgroup_of(pid: int) -> str | None:
    """The cgroup v2 path of `pid` (the `0::` line of /proc/<pid>/cgroup), None if unreadable."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None
