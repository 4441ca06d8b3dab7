"""A session's mailbox: the app→UI messages kept for IPC_RECV pullers (weft-appctl recv).

It keeps the newest MAILBOX_MESSAGES messages and at most MAILBOX_BYTES of them; older ones
are dropped, so an app that floods IPC while nobody pulls costs a bounded amount of memory
(issue 7, defect 5). The newest message is always kept.
"""
from __future__ import annotations

import collections
import sys

MAILBOX_MESSAGES = 256
MAILBOX_BYTES = 2 << 20  # > 2 of the largest payloads (256 KiB of 4-byte characters)


class Mailbox:
    def __init__(self, max_messages: int = MAILBOX_MESSAGES, max_bytes: int = MAILBOX_BYTES):
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.messages: collections.deque[str] = collections.deque()
        self.bytes = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.messages)

    def put(self, payload: str) -> None:
        self.messages.append(payload)
        self.bytes += sys.getsizeof(payload)
        while len(self.messages) > 1 and (len(self.messages) > self.max_messages or self.bytes > self.max_bytes):
            self.bytes -= sys.getsizeof(self.messages.popleft())
            self.dropped += 1

    def take(self) -> str:
        """The oldest message (the mailbox must not be empty)."""
        payload = self.messages.popleft()
        self.bytes -= sys.getsizeof(payload)
        return payload
