"""Contract fixtures: every BlobStore and MessageQueue adapter behind one factory, so one test body runs
against the in-memory reference, the local (directory / SQLite) adapters and the AWS adapters on moto.

moto runs as a `ThreadedMotoServer` on 127.0.0.1 rather than `mock_aws`: aioboto3 sends its requests through
aiohttp, which `mock_aws` (a botocore/`responses` patch) does not intercept reliably."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from facerec.adapters.memory import MemoryBlobStore, MemoryQueue
from facerec.ports import BlobStore, MessageQueue
from facerec.settings import Settings

# Dummy values for moto only; never real credentials.
MOTO_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as patch:
        for variable, value in MOTO_ENV.items():
            patch.setenv(variable, value)
        # A developer's ~/.aws profile must not leak into the tests.
        patch.delenv("AWS_PROFILE", raising=False)
        # Its per-request access log would bury any failure's own output.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


def moto_settings(endpoint: str, **overrides: Any) -> Settings:
    return Settings(backend="aws", aws_endpoint_url=endpoint, aws_region="us-east-1", **overrides)


def boto3_client(service: str, endpoint: str) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1")


def unique_name(kind: str) -> str:
    return f"ct-{kind}-{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def moto_clients(endpoint: str) -> AsyncIterator[Any]:
    from facerec.adapters.aws_session import AwsClients

    async with AwsClients(moto_settings(endpoint)) as aws:
        yield aws


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


@dataclass(frozen=True)
class QueueKit:
    """Makes queues of one backend. `tick` is the shortest visibility timeout it honours (SQS: whole
    seconds), so timing tests scale to the backend."""

    backend: str
    make: Callable[..., Awaitable[MessageQueue]]
    tick: float
    has_dead_letters: bool


@pytest.fixture(params=["memory", "local", "sqs"])
async def queue_kit(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[QueueKit]:
    if request.param == "memory":

        async def make_memory(
            visibility_timeout: float = 30.0, max_receives: int | None = None, max_message_bytes: int = 1024
        ) -> tuple[MessageQueue, MessageQueue]:
            dead = MemoryQueue("dlq", visibility_timeout=visibility_timeout)
            queue = MemoryQueue("q", visibility_timeout, max_receives, dead, max_message_bytes)
            return queue, dead

        yield QueueKit("memory", make_memory, tick=0.2, has_dead_letters=True)
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

        yield QueueKit("local", make_local, tick=0.2, has_dead_letters=True)
        await database.aclose()
    else:
        from facerec.adapters.sqs_queue import SqsQueue

        endpoint = request.getfixturevalue("moto_endpoint")
        sqs = boto3_client("sqs", endpoint)

        async def make_sqs(
            visibility_timeout: float = 30.0, max_receives: int | None = None, max_message_bytes: int = 1024
        ) -> tuple[MessageQueue, MessageQueue]:
            attributes = {
                "VisibilityTimeout": str(int(visibility_timeout)),
                "MaximumMessageSize": str(max_message_bytes),
            }
            name = unique_name("q")
            sqs.create_queue(QueueName=name, Attributes=attributes)
            queue = await SqsQueue.from_name(aws, name)
            return queue, queue

        async with moto_clients(endpoint) as aws:
            yield QueueKit("sqs", make_sqs, tick=1.0, has_dead_letters=False)
