"""The hub's per-client queues and the session mailbox are bounded in bytes (unit tests)."""
from __future__ import annotations

import asyncio
import json

from weft.daemons.appd.hub import Hub
from weft.daemons.appd.mailbox import Mailbox
from weft.daemons.protocol import AppState, IpcMessage, SessionState

KIB = 1024


def _message(size: int, session_id: int = 1) -> IpcMessage:
    return IpcMessage(session_id=session_id, payload="x" * size)


def test_a_client_over_its_budget_is_dropped_replies_included() -> None:
    hub = Hub(subscriber_limit=100 * KIB, total_limit=10_000 * KIB)
    dropped: list[str] = []
    slow = hub.subscribe(None, dropped.append)
    other = hub.subscribe(None, lambda reason: None)
    for _ in range(3):
        hub.publish(_message(30 * KIB))
    assert dropped == [] and slow.queued_bytes > 90 * KIB
    slow.offer(_message(30 * KIB))  # a reply counts like a broadcast
    assert len(dropped) == 1 and "bytes unread" in dropped[0]
    assert slow not in hub.subscribers and slow.queued_bytes == 0 and not slow.queue
    hub.publish(_message(1))
    assert not slow.queue  # nothing more is queued for a dropped client
    assert len(other.queue) == 4 and hub.queued_bytes == other.queued_bytes


def test_when_all_clients_together_are_over_the_largest_is_dropped() -> None:
    hub = Hub(subscriber_limit=1000 * KIB, total_limit=150 * KIB)
    dropped: list[str] = []
    control = hub.subscribe(None, lambda reason: dropped.append("control"))  # sees every session
    page = hub.subscribe(2, lambda reason: dropped.append("page"))
    hub.publish(_message(50 * KIB), session_id=1)
    hub.publish(_message(30 * KIB), session_id=2)
    assert dropped == [] and hub.queued_bytes == control.queued_bytes + page.queued_bytes
    hub.publish(_message(30 * KIB), session_id=2)  # control ~110 KiB + page ~60 KiB > 150 KiB
    assert dropped == ["control"] and control not in hub.subscribers
    assert hub.queued_bytes == page.queued_bytes < 150 * KIB


def test_reading_releases_the_budget() -> None:
    async def scenario() -> None:
        hub = Hub(subscriber_limit=100 * KIB, total_limit=100 * KIB)
        dropped: list[str] = []
        reader = hub.subscribe(None, dropped.append)
        for _ in range(20):
            hub.publish(_message(30 * KIB))
            assert json.loads(await reader.next())["type"] == "IPC_MESSAGE"
        reader.offer(AppState(session_id=1, state=SessionState.RUNNING))
        assert json.loads(await reader.next()) == {"type": "APP_STATE", "session_id": 1, "state": "running"}
        assert dropped == [] and reader.queued_bytes == 0 == hub.queued_bytes

    asyncio.run(scenario())


def test_mailbox_keeps_the_newest_messages_within_its_bytes() -> None:
    mailbox = Mailbox(max_messages=256, max_bytes=100 * KIB)
    for number in range(50):
        mailbox.put(f"{number:03}" + "x" * (10 * KIB))
    kept = len(mailbox)
    assert kept < 10 and mailbox.bytes <= 100 * KIB and mailbox.dropped == 50 - kept
    assert mailbox.take().startswith(f"{50 - kept:03}")  # the oldest of the newest
    huge = "y" * (200 * KIB)
    mailbox.put(huge)
    assert len(mailbox) == 1 and mailbox.take() == huge  # the newest is always kept
    for number in range(300):
        mailbox.put(str(number))
    assert len(mailbox) == 256 and mailbox.take() == "44"
