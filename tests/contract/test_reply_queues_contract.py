"""ReplyQueues contract: the per-process reply queues of #15, on every backend (`reply_queues` fixture).

What the web tier and the workers rely on: a created queue is found by every process of the deployment, `list`
names only this deployment's per-process queues, and a deleted queue is gone for everyone, messages included
(a worker holding its handle gets QueueNotFound, and acknowledges the request instead of answering nobody)."""

from __future__ import annotations

import uuid

import pytest

from facerec.messages import MAX_RESPONSE_BYTES
from facerec.ports import MessageQueue, QueueNotFound, ReplyQueues
from tests.contract.kits import ReplyKit


def reply_name(kit: ReplyKit) -> str:
    return f"{kit.prefix}-resp-{uuid.uuid4().hex[:12]}"


async def test_create_is_idempotent_and_opens_the_same_queue(reply_queues: ReplyKit) -> None:
    replies = reply_queues.replies
    assert isinstance(replies, ReplyQueues)
    name = reply_name(reply_queues)
    first = await replies.create(name)
    again = await replies.create(name)
    assert isinstance(first, MessageQueue) and first.name == again.name == name
    await first.send('{"id": "a"}')
    [message] = await again.receive(10, wait_seconds=2)
    assert message.body == '{"id": "a"}'  # one queue, not two
    assert await replies.list() == [name]


async def test_open_send_receive_round_trip_sized_for_responses(reply_queues: ReplyKit) -> None:
    replies = reply_queues.replies
    name = reply_name(reply_queues)
    await replies.create(name)
    queue = await replies.open(name)
    assert queue.max_message_bytes >= MAX_RESPONSE_BYTES
    large = "x" * (MAX_RESPONSE_BYTES - 100)  # an answer listing every face with its candidates
    await queue.send_batch(['{"id": "b"}', large])
    received = await queue.receive(10, wait_seconds=2)
    received += await queue.receive(10, wait_seconds=2) if len(received) < 2 else []
    assert sorted(m.body for m in received) == sorted(['{"id": "b"}', large])
    await queue.delete_batch([m.receipt for m in received])
    assert (await queue.stats()).visible == 0


@pytest.mark.parametrize("suffix", ["queue", "0123456789ab-x", "0123456789AB", ""])
async def test_create_refuses_names_that_are_not_a_process_reply_queue(reply_queues: ReplyKit, suffix: str) -> None:
    """The fixed queue (`resp-queue`) is set-up's, never a web process's; other names are not reply queues."""
    with pytest.raises(ValueError):
        await reply_queues.replies.create(f"{reply_queues.prefix}-resp-{suffix}")
    with pytest.raises(ValueError):
        await reply_queues.replies.create(f"{reply_queues.prefix}-req-queue")


async def test_list_excludes_the_fixed_queue_and_other_deployments(reply_queues: ReplyKit) -> None:
    prefix = reply_queues.prefix
    fixed = await reply_queues.make_fixed()
    await fixed.send('{"id": "fixed"}')
    # Deployments whose queue names start like ours: `<prefix>x-resp-...` and `<prefix>-resp-resp-...`.
    for other in (f"{prefix}x", f"{prefix}-resp"):
        foreign = await reply_queues.for_prefix(other)
        await foreign.create(f"{other}-resp-{uuid.uuid4().hex[:12]}")
        assert await foreign.list() != []
    ours = sorted(reply_name(reply_queues) for _ in range(2))
    for name in ours:
        await reply_queues.replies.create(name)
    assert await reply_queues.replies.list() == ours


async def test_open_of_a_queue_never_created_or_not_a_reply_queue_raises(reply_queues: ReplyKit) -> None:
    await reply_queues.make_fixed()
    for name in (reply_name(reply_queues), f"{reply_queues.prefix}-resp-queue", f"{reply_queues.prefix}-req-queue"):
        with pytest.raises(QueueNotFound):
            await reply_queues.replies.open(name)


async def test_delete_drops_the_messages_and_the_queue(reply_queues: ReplyKit) -> None:
    replies = reply_queues.replies
    name, kept = reply_name(reply_queues), reply_name(reply_queues)
    queue = await replies.create(name)
    other = await replies.create(kept)
    await queue.send_batch(["1", "2", "3"])
    await other.send("stays")
    await replies.delete(name)
    with pytest.raises(QueueNotFound):
        await replies.open(name)
    with pytest.raises(QueueNotFound):
        await queue.send("to a deleted queue")  # a handle held across the delete
    with pytest.raises(QueueNotFound):
        await queue.receive(10)  # its owner, reaped while it was away, learns it here
    assert await replies.list() == [kept]
    [message] = await other.receive(10, wait_seconds=2)
    assert message.body == "stays"
    if reply_queues.backend != "sqs":  # SQS refuses to recreate a name for 60 s after its delete
        recreated = await replies.create(name)
        assert await recreated.receive(10) == []  # the old messages went with the queue


async def test_delete_of_a_missing_queue_is_not_an_error(reply_queues: ReplyKit) -> None:
    name = reply_name(reply_queues)
    await reply_queues.replies.delete(name)
    await reply_queues.replies.create(name)
    await reply_queues.replies.delete(name)
    await reply_queues.replies.delete(name)
    assert await reply_queues.replies.list() == []


async def test_two_processes_views_agree(reply_queues: ReplyKit) -> None:
    """A web process creates its queue; a worker (another view) finds it, answers on it, and sees it deleted."""
    web, worker = reply_queues.replies, await reply_queues.other_view()
    name = reply_name(reply_queues)
    mine = await web.create(name)
    assert await worker.list() == [name]
    theirs = await worker.open(name)
    await theirs.send_batch(['{"id": "c"}'])
    [message] = await mine.receive(10, wait_seconds=5)
    assert message.body == '{"id": "c"}'
    await mine.delete_batch([message.receipt])
    await web.delete(name)
    assert await worker.list() == []
    with pytest.raises(QueueNotFound):
        await worker.open(name)
    with pytest.raises(QueueNotFound):
        await theirs.send_batch(['{"id": "late"}'])
