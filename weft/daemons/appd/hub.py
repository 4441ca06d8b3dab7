"""Push delivery to WebSocket clients: the broadcast hub and per-client queues bounded in bytes.

Everything queued for a client, broadcasts and replies alike, counts against that client's
budget (SUBSCRIBER_QUEUE_BYTES) and against one budget shared by all clients
(HUB_QUEUE_BYTES). A client over its budget, or the one holding the most when the total is
over, is dropped: its queue is freed at once and its connection is closed with a logged
reason. A slow reader loses its connection; appd does not lose its memory (issue 7, defect 5:
4,500 unread 256 KiB messages once held 1.1 GiB).
"""
from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import Callable

from weft.daemons.protocol import Message, encode_json

SUBSCRIBER_QUEUE_BYTES = 8 << 20  # > 5 of the largest messages (256 KiB payload, JSON-escaped)
HUB_QUEUE_BYTES = 64 << 20


def _size(text: str) -> int:
    return sys.getsizeof(text)  # what the string costs in memory (1, 2 or 4 bytes a character)


class Subscriber:
    """One push client. `session_id` None sees every broadcast; otherwise only that session's."""

    def __init__(self, hub: Hub, session_id: int | None, on_drop: Callable[[str], None]):
        self.hub = hub
        self.session_id = session_id
        self.on_drop = on_drop  # called once, with the reason, when the hub drops this client
        self.queue: collections.deque[str] = collections.deque()
        self.queued_bytes = 0
        self.ready = asyncio.Event()

    def offer(self, message: Message) -> None:
        """Queue a message (a reply) for this client, within the same budgets as broadcasts."""
        self.hub.enqueue(self, encode_json(message))

    async def next(self) -> str:
        """The next queued message, as JSON text (waits for one)."""
        while not self.queue:
            self.ready.clear()
            await self.ready.wait()
        text = self.queue.popleft()
        self.queued_bytes -= _size(text)
        self.hub.queued_bytes -= _size(text)
        return text


class Hub:
    def __init__(self, subscriber_limit: int = SUBSCRIBER_QUEUE_BYTES, total_limit: int = HUB_QUEUE_BYTES):
        self.subscriber_limit = subscriber_limit
        self.total_limit = total_limit
        self.subscribers: set[Subscriber] = set()
        self.queued_bytes = 0

    def subscribe(self, session_id: int | None, on_drop: Callable[[str], None]) -> Subscriber:
        subscriber = Subscriber(self, session_id, on_drop)
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self.subscribers:
            self.subscribers.discard(subscriber)
            self.queued_bytes -= subscriber.queued_bytes
        subscriber.queue.clear()
        subscriber.queued_bytes = 0

    def publish(self, message: Message, session_id: int | None = None) -> None:
        targets = [s for s in self.subscribers if s.session_id is None or s.session_id == session_id]
        if targets:
            text = encode_json(message)  # once for every client
            for subscriber in targets:
                self.enqueue(subscriber, text)

    def enqueue(self, subscriber: Subscriber, text: str) -> None:
        if subscriber not in self.subscribers:
            return  # dropped already; its connection is closing
        size = _size(text)
        subscriber.queue.append(text)
        subscriber.queued_bytes += size
        self.queued_bytes += size
        subscriber.ready.set()
        if subscriber.queued_bytes > self.subscriber_limit:
            self._drop(subscriber, f"{subscriber.queued_bytes} bytes unread, more than {self.subscriber_limit}")
        while self.queued_bytes > self.total_limit:
            largest = max(self.subscribers, key=lambda s: s.queued_bytes)
            self._drop(largest, f"{largest.queued_bytes} bytes unread, the most while all clients together "
                                f"had more than {self.total_limit}")

    def _drop(self, subscriber: Subscriber, reason: str) -> None:
        self.unsubscribe(subscriber)
        subscriber.on_drop(reason)
