"""A worker stopped while idle in its receive spends no delivery: no message's receive count rises.

Local queue: a cancelled receive hands back what its claim took. SQS (moto): a cancelled long poll keeps
running on the server and would take a message sent meanwhile, so the worker polls in short slices and lets
the slice in flight end instead of abandoning it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid

import pytest

from facerec.adapters.local_queue import SqliteDatabase, SqliteQueue
from facerec.adapters.sqs_queue import SqsQueue
from facerec.backend import open_data_tier
from facerec.settings import Settings
from facerec.worker.loop import Worker
from tests.aws import create_aws_resources
from tests.worker.fakes import FakeRecognizer, photo_of, submit

pytestmark = pytest.mark.slow


async def test_a_receive_cancelled_during_its_claim_gives_the_messages_back(tmp_path: object) -> None:
    path = tmp_path / "queues.sqlite3"  # type: ignore[operator]
    database = await SqliteDatabase.open(path)
    queue = SqliteQueue(database, "requests", visibility_timeout=30)
    # Another process holds the write lock while it sends: the receive's claim starts and blocks on it.
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute(
        "INSERT INTO messages (queue, message_id, body, visible_at) VALUES (?, ?, ?, ?)",
        ("requests", uuid.uuid4().hex, "hello", time.time()),
    )
    try:
        receive = asyncio.create_task(queue.receive(10, wait_seconds=5))
        await asyncio.sleep(0.3)  # the claim is now waiting for the lock on the database thread
        receive.cancel()
        other.execute("COMMIT")  # the claim proceeds, takes the message, and must give it back
        with pytest.raises(asyncio.CancelledError):
            await receive
        (message,) = await queue.receive(10, wait_seconds=5)
        assert (message.body, message.receive_count) == ("hello", 1)
    finally:
        other.close()
        await database.aclose()


def test_queues_declare_whether_a_receive_can_be_cancelled() -> None:
    assert SqliteQueue.receive_cancel_safe
    assert not SqsQueue.receive_cancel_safe


async def test_stopping_an_idle_worker_on_sqs_spends_no_receive(endpoint: str) -> None:
    settings = Settings(
        backend="aws",
        aws_endpoint_url=endpoint,
        prefix=f"stop-{uuid.uuid4().hex[:8]}",
        worker_poll_wait_s=5.0,  # a long poll the stop would have abandoned before slicing
        worker_poll_slice_s=1.0,
        visibility_timeout_s=30,
    )
    create_aws_resources(settings)
    async with open_data_tier(settings) as data:
        stop = asyncio.Event()
        worker = Worker(data, FakeRecognizer(), settings, name="stopping-worker")
        task = asyncio.create_task(worker.run(stop))
        await asyncio.sleep(0.5)  # idle, in a receive
        stop.set()
        # A request arriving while the stop is under way: taken by an abandoned poll, it would be hidden for
        # the visibility timeout with one receive spent.
        request = await submit(data, "late.jpg", photo_of("Paul"))
        await asyncio.wait_for(task, timeout=20)
        stats = await data.requests.stats()
        assert stats.in_flight == 0, "a message is hidden: the stop abandoned a receive that took it"
        if stats.visible:  # not taken by the last slice: untouched, its first delivery still to come
            (message,) = await data.requests.receive(10, wait_seconds=2)
            assert request.id in message.body
            assert message.receive_count == 1
        else:  # taken by the slice in flight: answered, not released
            assert worker.stats.processed == 1
