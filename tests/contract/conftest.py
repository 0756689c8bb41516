"""Contract fixtures: every BlobStore, MessageQueue and ReplyQueues adapter behind one factory, so one test body
runs against the in-memory reference, the local (directory / SQLite) adapters and the AWS adapters on moto."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from facerec.adapters.memory import MemoryBlobStore, MemoryCoordination, MemoryQueue, MemoryReplyQueues
from facerec.ports import BlobStore, MessageQueue, ReplyQueues
from tests.aws import boto3_client, moto_clients, unique_name
from tests.contract.kits import CoordinationKit, ManualClock, QueueKit, ReplyKit


@pytest.fixture(params=["memory", "local", "s3"])
async def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "memory":
        yield MemoryBlobStore("memory")
    elif request.param == "local":
        from facerec.adapters.local_blob import LocalBlobStore

        root = tmp_path / "bucket"
        root.mkdir()
        yield LocalBlobStore(root, "bucket")
    else:
        from facerec.adapters.s3_blob import S3BlobStore

        endpoint = request.getfixturevalue("moto_endpoint")
        bucket = unique_name("bucket")
        boto3_client("s3", endpoint).create_bucket(Bucket=bucket)
        async with moto_clients(endpoint) as aws:
            yield S3BlobStore(aws, bucket)


@pytest.fixture(params=["memory", "local", "sqs"])
async def queue_kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[QueueKit]:
    if request.param == "memory":

        async def make_memory(
            visibility_timeout: float = 30.0, max_receives: int | None = None, max_message_bytes: int = 1024
        ) -> tuple[MessageQueue, MessageQueue]:
            dead = MemoryQueue("dlq", visibility_timeout=visibility_timeout)
            queue = MemoryQueue("q", visibility_timeout, max_receives, dead, max_message_bytes)
            return queue, dead

        yield QueueKit("memory", make_memory, tick=0.2)
    elif request.param == "local":
        from facerec.adapters.local_queue import SqliteDatabase, SqliteQueue

        database = await SqliteDatabase.open(tmp_path / "queues.sqlite3")

        async def make_local(
            visibility_timeout: float = 30.0, max_receives: int | None = None, max_message_bytes: int = 1024
        ) -> tuple[MessageQueue, MessageQueue]:
            name = unique_name("q")
            dead = SqliteQueue(database, f"{name}-dlq", visibility_timeout=visibility_timeout)
            queue = SqliteQueue(database, name, visibility_timeout, max_receives, dead.name, max_message_bytes)
            return queue, dead

        yield QueueKit("local", make_local, tick=0.2)
        await database.aclose()
    else:
        from facerec.adapters.sqs_queue import SqsQueue

        endpoint = request.getfixturevalue("moto_endpoint")
        sqs = boto3_client("sqs", endpoint)

        async def make_sqs(
            visibility_timeout: float = 30.0, max_receives: int | None = None, max_message_bytes: int = 1024
        ) -> tuple[MessageQueue, MessageQueue]:
            name = unique_name("q")
            # On SQS a redrive policy (set by provisioning) moves messages to the dead-letter queue.
            dead_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
            attributes = {
                "VisibilityTimeout": str(int(visibility_timeout)),
                "MaximumMessageSize": str(max_message_bytes),
            }
            if max_receives is not None:
                dead_arn = sqs.get_queue_attributes(QueueUrl=dead_url, AttributeNames=["QueueArn"])["Attributes"]
                attributes["RedrivePolicy"] = json.dumps(
                    {"deadLetterTargetArn": dead_arn["QueueArn"], "maxReceiveCount": str(max_receives)}
                )
            sqs.create_queue(QueueName=name, Attributes=attributes)
            return await SqsQueue.from_name(aws, name), await SqsQueue.from_name(aws, f"{name}-dlq")

        async with moto_clients(endpoint) as aws:
            yield QueueKit("sqs", make_sqs, tick=1.0)


@pytest.fixture(params=["memory", "local"])
async def coordination(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CoordinationKit]:
    clock = ManualClock()
    if request.param == "memory":
        yield CoordinationKit("memory", MemoryCoordination(clock), clock)
    else:
        from facerec.adapters.local_coordination import LocalCoordination
        from facerec.adapters.local_queue import SqliteDatabase

        database = await SqliteDatabase.open(tmp_path / "queues.sqlite3")
        yield CoordinationKit("local", await LocalCoordination.open(database, clock), clock)
        await database.aclose()


@pytest.fixture(params=["memory", "local"])
async def reply_queues(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ReplyKit]:
    prefix = unique_name("rq")
    if request.param == "memory":
        replies = MemoryReplyQueues(prefix)

        async def memory_view() -> ReplyQueues:
            return replies.view()

        async def memory_prefix(other: str) -> ReplyQueues:
            # The same store under another prefix: what `list` must not mix up.
            return replies.view(other)

        async def memory_fixed() -> MessageQueue:
            return MemoryQueue(f"{prefix}-resp-queue")

        yield ReplyKit("memory", prefix, replies, memory_view, memory_prefix, memory_fixed)
    else:
        from facerec.adapters.local_queue import SqliteDatabase, SqliteQueue
        from facerec.adapters.local_replies import SqliteReplyQueues

        path = tmp_path / "queues.sqlite3"
        databases = [await SqliteDatabase.open(path)]

        async def local_view() -> ReplyQueues:
            databases.append(await SqliteDatabase.open(path))  # another process's connection and watcher
            return await SqliteReplyQueues.attach(databases[-1], prefix)

        async def local_prefix(other: str) -> ReplyQueues:
            return await SqliteReplyQueues.attach(databases[0], other)

        async def local_fixed() -> MessageQueue:
            return SqliteQueue(databases[0], f"{prefix}-resp-queue")

        try:
            replies_local = await SqliteReplyQueues.attach(databases[0], prefix)
            yield ReplyKit("local", prefix, replies_local, local_view, local_prefix, local_fixed)
        finally:
            for database in databases:
                await database.aclose()
