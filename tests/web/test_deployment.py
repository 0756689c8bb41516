"""A web process's place in its deployment (facerec.web.deployment): the reply channel chosen by the fixed queue's
lease, heartbeats (periodic and on in-flight 0 <-> non-0), reaping of dead members and orphan reply queues, and
the clean leave. Several Deployment objects share one in-memory Coordination and reply-queue store, as web
processes share the data tier."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from facerec.adapters.memory import MemoryCoordination, MemoryQueue, MemoryReplyQueues
from facerec.ports import WebMember
from facerec.settings import Settings
from facerec.web.deployment import Deployment, reply_lease

SETTINGS = Settings(prefix="dep", web_heartbeat_s=60.0, web_stale_s=5.0)


class RecordingReplies(MemoryReplyQueues):
    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self.deleted: list[str] = []

    async def delete(self, name: str) -> None:
        self.deleted.append(name)
        await super().delete(name)


class Store:
    """One deployment's shared data tier parts."""

    def __init__(self) -> None:
        self.coordination = MemoryCoordination()
        self.replies = RecordingReplies(SETTINGS.prefix)
        self.fixed = MemoryQueue(SETTINGS.resp_queue)

    def process(self, in_flight: Callable[[], int] = lambda: 0, settings: Settings = SETTINGS) -> Deployment:
        return Deployment(settings, self.coordination, self.replies, self.fixed, in_flight, address="127.0.0.1:1")


@asynccontextmanager
async def joined(deployment: Deployment) -> AsyncIterator[Deployment]:
    await deployment.join()
    try:
        yield deployment
    finally:
        await deployment.leave()


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_the_first_process_reads_the_fixed_queue_and_the_next_ones_their_own() -> None:
    store = Store()
    async with joined(store.process()) as first, joined(store.process()) as second:
        assert first.channel is not None and second.channel is not None
        assert first.channel.queue is store.fixed and first.channel.reply_to is None  # today's bytes
        assert second.channel.own and second.channel.reply_to == f"dep-resp-{second.web_id}"
        assert await store.replies.list() == [f"dep-resp-{second.web_id}"]
        members = await store.coordination.members()
        assert {(m.web_id, m.reply_queue) for m in members} == {
            (first.web_id, "dep-resp-queue"),
            (second.web_id, f"dep-resp-{second.web_id}"),
        }
        assert len(second.live_members) == 2


async def test_a_clean_leave_deletes_the_own_queue_and_frees_the_fixed_one() -> None:
    store = Store()
    first = store.process()
    await first.join()
    async with joined(store.process()) as second:
        await first.leave()
        await second.leave()
        assert await store.replies.list() == []
        assert await store.coordination.members() == []
        # The fixed queue's lease was released: the next process reads it without waiting for expiry.
        async with joined(store.process()) as third:
            assert third.channel is not None and not third.channel.own


async def test_in_flight_leaving_and_reaching_zero_heartbeats_at_once() -> None:
    store = Store()
    in_flight = [0]
    async with joined(store.process(lambda: in_flight[0])) as process:

        async def reported() -> int:
            return next(m.in_flight for m in await store.coordination.members() if m.web_id == process.web_id)

        in_flight[0] = 3  # the periodic heartbeat is a minute away: only the edge can report this
        deadline = time.monotonic() + 10
        while await reported() != 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        in_flight[0] = 0
        while await reported() != 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)


async def test_stale_members_are_reaped_with_their_queue_but_never_the_fixed_queue() -> None:
    store = Store()
    old = time.time() - 60
    dead_queue = await store.replies.create("dep-resp-0123456789ab")
    await store.coordination.heartbeat(WebMember("0123456789ab", dead_queue.name, 4, old))
    await store.coordination.heartbeat(WebMember("ba9876543210", "dep-resp-queue", 2, old))
    await store.coordination.acquire(reply_lease(SETTINGS), "ba9876543210", 0.001)  # its lease lapsed too
    await asyncio.sleep(0.01)
    async with joined(store.process()) as process:
        assert [m.web_id for m in await store.coordination.members()] == [process.web_id]
        assert await store.replies.list() == []
        assert store.replies.deleted == ["dep-resp-0123456789ab"]  # never the fixed queue
        assert process.reaped == 2
        assert process.channel is not None and not process.channel.own  # the dead reader's lease had lapsed
        assert process.others_in_flight() == 0  # the dead members' in-flight counts no longer count


async def test_a_live_members_in_flight_counts_and_a_silent_one_is_reaped_by_the_sweep() -> None:
    store = Store()
    settings = SETTINGS.model_copy(update={"web_stale_s": 0.5})
    async with joined(store.process(lambda: 5, settings)) as busy, joined(store.process(settings=settings)) as other:
        await other.read_members()
        assert other.others_in_flight() == 5
        # `busy` freezes (its loop stops, as in a long pause or a kill -9): the sweep reaps it.
        assert busy._task is not None
        busy._task.cancel()
        await asyncio.sleep(0.6)
        await other.sweep()
        assert [m.web_id for m in await store.coordination.members()] == [other.web_id]
        assert other.others_in_flight() == 0


async def test_reply_queues_no_member_names_are_reaped_at_start() -> None:
    store = Store()
    await store.replies.create("dep-resp-aaaaaaaaaaaa")  # a process died between its create and... anything
    async with joined(store.process()):
        assert await store.replies.list() == []


async def test_a_process_reaped_while_silent_comes_back_with_its_queue() -> None:
    store = Store()
    async with joined(store.process()), joined(store.process()) as second:
        assert second.channel is not None
        name = second.channel.queue.name
        await store.replies.delete(name)
        await store.coordination.leave(second.web_id)  # what a sweeper does to a process it thinks dead
        await second.sweep()
        assert name in await store.replies.list()
        assert second.web_id in [m.web_id for m in await store.coordination.members()]


async def test_a_reader_of_the_fixed_queue_that_lost_its_lease_says_so() -> None:
    store = Store()
    settings = SETTINGS.model_copy(update={"web_stale_s": 0.05})
    async with joined(store.process(settings=settings)) as first:
        await asyncio.sleep(0.1)  # silent past its lease (the periodic heartbeat is a minute away)
        assert await store.coordination.acquire(reply_lease(settings), "ffffffffffff", 60) is not None
        await first.heartbeat()
        assert first.reply_lease_lost
