"""`open_data_tier(settings)`: the stores and queues of the configured backend, opened and closed together.

local: `data_dir/blobs/<bucket>/` directories and one `data_dir/queues.sqlite3`, created on first use, so
the embedded default works on a fresh machine with no setup. aws: one aioboto3 session; the buckets and
queues must already exist (`facerec aws provision`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import TypedDict

from facerec.messages import MAX_RESPONSE_BYTES
from facerec.ports import BlobStore, DataTier, PortError
from facerec.settings import Settings

log = logging.getLogger(__name__)

QUEUE_DB_NAME = "queues.sqlite3"


class _QueueLimits(TypedDict):
    """The SqliteQueue arguments every local queue shares."""

    visibility_timeout: float
    max_message_bytes: int


def _make_directory(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PortError(f"cannot create data directory {path}: {exc.strerror or exc}") from exc
    return path


@asynccontextmanager
async def open_local_data_tier(settings: Settings) -> AsyncIterator[DataTier]:
    from facerec.adapters.local_blob import LocalBlobStore
    from facerec.adapters.local_coordination import LocalCoordination
    from facerec.adapters.local_queue import SqliteDatabase, SqliteQueue
    from facerec.adapters.local_replies import SqliteReplyQueues

    data_dir = _make_directory(settings.data_dir)

    def store(bucket: str, durable: bool) -> LocalBlobStore:
        return LocalBlobStore(_make_directory(data_dir / "blobs" / bucket), bucket, durable=durable)

    every = settings.durable_writes == "all"
    inputs, outputs = store(settings.in_bucket, every), store(settings.out_bucket, every)
    gallery = store(settings.gallery_bucket, settings.durable_writes != "off")
    database = await SqliteDatabase.open(data_dir / QUEUE_DB_NAME)
    try:
        common: _QueueLimits = {
            "visibility_timeout": settings.visibility_timeout_s,
            "max_message_bytes": settings.message_max_bytes,
        }
        requests = SqliteQueue(
            database, settings.req_queue, max_receives=settings.max_receives, dead_letter=settings.dlq, **common
        )
        # Responses may list every face with its candidates: larger than the course's request limit.
        response_limits: _QueueLimits = {
            "visibility_timeout": settings.visibility_timeout_s,
            "max_message_bytes": max(MAX_RESPONSE_BYTES, settings.message_max_bytes),
        }
        replies = await SqliteReplyQueues.attach(database, settings.prefix, **response_limits)
        log.info("data_tier_opened", extra={"backend": "local", "data_dir": str(data_dir)})
        yield DataTier(
            inputs=inputs,
            outputs=outputs,
            requests=requests,
            responses=SqliteQueue(database, settings.resp_queue, **response_limits),
            dead_letters=SqliteQueue(database, settings.dlq, **common),
            gallery=gallery,
            coordination=await LocalCoordination.open(database),
            replies=replies,
        )
    finally:
        await database.aclose()


@asynccontextmanager
async def open_aws_data_tier(settings: Settings) -> AsyncIterator[DataTier]:
    from facerec.adapters.aws_session import AwsClients
    from facerec.adapters.s3_blob import S3BlobStore
    from facerec.adapters.s3_coordination import S3Coordination
    from facerec.adapters.sqs_queue import SqsQueue
    from facerec.adapters.sqs_replies import SqsReplyQueues

    async with AwsClients(settings) as aws:
        queues = [
            await SqsQueue.from_name(aws, name) for name in (settings.req_queue, settings.resp_queue, settings.dlq)
        ]
        log.info("data_tier_opened", extra={"backend": "aws", "region": settings.aws_region, "prefix": settings.prefix})
        yield DataTier(
            inputs=S3BlobStore(aws, settings.in_bucket),
            outputs=S3BlobStore(aws, settings.out_bucket),
            requests=queues[0],
            responses=queues[1],
            dead_letters=queues[2],
            gallery=S3BlobStore(aws, settings.gallery_bucket),
            # Per-process reply queues are SQS queues like the fixed one; membership and leases are objects
            # under `_deployment/` in the gallery bucket (conditional writes; no new server).
            replies=SqsReplyQueues(aws, settings, queues[1]),
            coordination=S3Coordination(aws, settings.gallery_bucket),
        )


@asynccontextmanager
async def open_gallery_store(settings: Settings) -> AsyncIterator[BlobStore]:
    """Only the gallery store (the gallery bucket on aws), for commands that need nothing else: no queue is
    opened, so a role that may not touch the queues can still read the gallery file."""
    if settings.backend == "aws":
        from facerec.adapters.aws_session import AwsClients
        from facerec.adapters.s3_blob import S3BlobStore

        async with AwsClients(settings) as aws:
            yield S3BlobStore(aws, settings.gallery_bucket)
        return
    from facerec.adapters.local_blob import LocalBlobStore

    directory = _make_directory(settings.data_dir / "blobs" / settings.gallery_bucket)
    yield LocalBlobStore(directory, settings.gallery_bucket)


def open_data_tier(settings: Settings) -> AbstractAsyncContextManager[DataTier]:
    """`async with open_data_tier(settings) as data:`; raises PortError when the backend cannot be opened."""
    if settings.backend == "aws":
        return open_aws_data_tier(settings)
    return open_local_data_tier(settings)
