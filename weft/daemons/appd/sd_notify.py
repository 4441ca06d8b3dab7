"""The sd_notify protocol: one datagram to $NOTIFY_SOCKET (no dependency needed)."""
from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("weft.appd")


def sd_notify(state: str) -> bool:
    """Send e.g. "READY=1"; False when not started by systemd with Type=notify."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("sd_notify(%s) failed: %s", state, exc)
        return False
    return True
