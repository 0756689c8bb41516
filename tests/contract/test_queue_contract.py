"""MessageQueue contract: memory (the reference), the SQLite queue, and SQS on moto.

Timing tests scale with `queue_kit.tick`, the shortest visibility timeout a backend honours (SQS: 1 s)."""

from __future__ import annotations

import asyncio
import time

import pytest

from facerec.ports import MessageQueue, MessageTooLarge
from tests.contract.kits import QueueKit


async def test_is_a_message_queue(queue_kit: QueueKit) -> None:
    queue, _ = await queue_kit.make()
    assert isinstance(queue, MessageQueue)
    assert queue.max_message_bytes == 1024
    await queue.check()


async def test_send_receive_delete(queue_kit: QueueKit) -> None:
    queue, _ = await queue_kit.make()
    message_id = await queue.send('{"id": "1"}')
    [message] = await queue.receive(10, wait_seconds=1)
    assert (message.message_id, message.body, message.receive_count) == (message_id, '{"id": "1"}', 1)
    assert message.receipt
    assert (await queue.stats()).in_flight == 1
    await queue.delete_batch([message.receipt])
    assert await queue.receive(10) == []
    stats = await queue.stats()
    assert (stats.visible, stats.in_flight) == (0, 0)


async def test_send_batch_any_size_and_receive_at_most_ten(queue_kit: QueueKit) -> None:
    queue, _ = await queue_kit.make()
    bodies = [f"m{i}" for i in range(23)]
    ids = await queue.send_batch(bodies)
    assert len(ids) == len(set(ids)) == 23
    assert (await queue.stats()).visible == 23
    received: dict[str, str] = {}
    for _ in range(10):
        batch = await queue.receive(50, wait_seconds=1)
        assert len(batch) <= 10
        received.update((m.message_id, m.body) for m in batch)
        await queue.delete_batch([m.receipt for m in batch])
        if len(received) == 23:
            break
    assert received == dict(zip(ids, bodies, strict=True))
    assert await queue.receive(1) == []


async def test_empty_receive_returns_after_its_wait(queue_kit: QueueKit) -> None:
    queue, _ = await queue_kit.make()
    started = time.monotonic()
    assert await queue.receive(10, wait_seconds=0) == []
    assert await queue.receive(10, wait_seconds=1) == []
    # It waited its second (not returned at once), and did return: the bound is generous for a busy machine.
    assert 0.9 <= time.monotonic() - started < 10


async def test_long_poll_returns_when_a_message_arrives(queue_kit: QueueKit) -> None:
    queue, _ = await queue_kit.make()
    receiving = asyncio.create_task(queue.receive(10, wait_seconds=10))
    await asyncio.sleep(0.2)
    sent_at = time.monotonic()
    await queue.send("wake")
    [message] = await receiving
    assert message.body == "wake"
    assert time.monotonic() - sent_at < 5  # woken by the send, not by the end of its 10 s wait


async def test_hidden_until_visibility_expires_then_redelivered_with_new_receipt(queue_kit: QueueKit) -> None:
    tick = queue_kit.tick
    queue, _ = await queue_kit.make(visibility_timeout=tick)
    await queue.send("again")
    [first] = await queue.receive(1)
    assert await queue.receive(1) == []
    [second] = await queue.receive(1, wait_seconds=tick * 4)
    assert (second.message_id, second.receive_count) == (first.message_id, 2)
    assert second.receipt != first.receipt
    if queue_kit.backend != "sqs":
        # The first delivery's receipt is stale: deleting with it must not remove the message. (SQS only
        # promises the delete "might not" happen, and moto does delete; either way no error is raised.)
        await queue.delete_batch([first.receipt])
    await queue.change_visibility([second.receipt], 0)
    [third] = await queue.receive(1, wait_seconds=1)
    assert third.receive_count == 3
    await queue.delete_batch([third.receipt])
    assert await queue.receive(1, wait_seconds=tick * 2) == []


async def test_receive_visibility_timeout_overrides_the_default(queue_kit: QueueKit) -> None:
    queue, _ = await queue_kit.make(visibility_timeout=300)
    await queue.send("short")
    await queue.receive(1, visibility_timeout=queue_kit.tick)
    [again] = await queue.receive(1, wait_seconds=queue_kit.tick * 4)
    assert again.receive_count == 2


async def test_change_visibility_zero_releases_at_once(queue_kit: QueueKit) -> None:
    queue, _ = await queue_kit.make(visibility_timeout=300)
    await queue.send_batch(["a", "b"])
    held = await queue.receive(10, wait_seconds=1)
    if len(held) < 2:  # SQS may return fewer than are there
        held += await queue.receive(10, wait_seconds=1)
    assert (await queue.stats()).in_flight == 2
    started = time.monotonic()
    await queue.change_visibility([m.receipt for m in held], 0)
    again = await queue.receive(10, wait_seconds=1)
    again += [] if len(again) == 2 else await queue.receive(10, wait_seconds=1)
    assert sorted(m.body for m in again) == ["a", "b"]
    assert time.monotonic() - started < 2


async def test_change_visibility_extends_a_held_message(queue_kit: QueueKit) -> None:
    tick = queue_kit.tick
    queue, _ = await queue_kit.make(visibility_timeout=tick)
    await queue.send("held")
    [message] = await queue.receive(1)
    await queue.change_visibility([message.receipt], tick * 3)
    await asyncio.sleep(tick * 1.5)
    assert await queue.receive(1) == []
    assert (await queue.stats()).in_flight == 1


async def test_stale_and_unknown_receipts_are_ignored(queue_kit: QueueKit) -> None:
    queue, _ = await queue_kit.make()
    await queue.send("keep")
    [message] = await queue.receive(1, wait_seconds=1)
    await queue.delete_batch([message.receipt])
    await queue.delete_batch([message.receipt])
    await queue.change_visibility([message.receipt], 0)
    await queue.delete_batch([])
    await queue.change_visibility([], 5)
    assert await queue.receive(1) == []


async def test_dead_letter_after_max_receives(queue_kit: QueueKit) -> None:
    queue, dead = await queue_kit.make(visibility_timeout=30, max_receives=2)
    message_id = await queue.send("poison")
    for expected_count in (1, 2):
        [message] = await queue.receive(1)
        assert message.receive_count == expected_count
        await queue.change_visibility([message.receipt], 0)
    # Delivered max_receives times: the next receive moves it instead of delivering it.
    assert await queue.receive(10) == []
    assert (await queue.stats()).visible == 0
    [dead_message] = await dead.receive(10, wait_seconds=1)
    assert (dead_message.message_id, dead_message.body) == (message_id, "poison")
    # SQS carries the receive count over into the dead-letter queue, the local queues restart it: consumers of
    # dead letters may rely on neither.
    assert dead_message.receive_count >= 1


async def test_message_size_limit(queue_kit: QueueKit) -> None:
    queue, _ = await queue_kit.make(max_message_bytes=1024)
    await queue.send("x" * 1024)
    with pytest.raises(MessageTooLarge):
        await queue.send("x" * 1025)
    with pytest.raises(MessageTooLarge):
        await queue.send("é" * 513)
    # A batch with one oversized body sends nothing.
    with pytest.raises(MessageTooLarge):
        await queue.send_batch(["fine", "y" * 2000])
    assert (await queue.stats()).visible == 1


async def test_stats_counts_visible_and_in_flight(queue_kit: QueueKit) -> None:
    queue, _ = await queue_kit.make(visibility_timeout=300)
    await queue.send_batch([str(i) for i in range(5)])
    taken = await queue.receive(2, wait_seconds=1)
    assert len(taken) == 2
    stats = await queue.stats()
    assert (stats.visible, stats.in_flight) == (3, 2)
