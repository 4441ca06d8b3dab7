"""The failure every mountd layer raises: a stable reason (the wire's MOUNT_ERROR.reason) and a message."""
from __future__ import annotations

from weft.daemons.protocol import MountReason
from weft.errors import WeftError


class MountdError(WeftError):
    def __init__(self, reason: MountReason, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class KernelError(WeftError):
    """A privileged step failed; `errno` is the kernel's answer (0 if none)."""

    def __init__(self, message: str, errno: int = 0) -> None:
        self.errno = errno
        super().__init__(message)
