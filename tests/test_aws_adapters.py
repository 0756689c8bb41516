"""The AWS adapters and `open_data_tier(backend=aws)` against a moto server: queue resolution, batching past
SQS's 10-entry limit, SQS's whole-second rounding, and botocore failures surfacing as PortError."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from facerec.adapters.s3_blob import S3BlobStore
from facerec.adapters.sqs_queue import SqsQueue
from facerec.backend import open_data_tier
from facerec.ports import BlobNotFound, PortError
from facerec.settings import Settings
from tests.aws import boto3_client, moto_clients, moto_settings, unique_name


def provision(settings: Settings) -> None:
    """What `facerec aws provision` sets up, enough for the data tier."""
    endpoint = str(settings.aws_endpoint_url)
    s3 = boto3_client("s3", endpoint)
    for bucket in (settings.in_bucket, settings.out_bucket):
        s3.create_bucket(Bucket=bucket)
    sqs = boto3_client("sqs", endpoint)
    dlq_url = sqs.create_queue(QueueName=settings.dlq)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(settings.max_receives)})
    sqs.create_queue(QueueName=settings.req_queue, Attributes={"MaximumMessageSize": "1024", "RedrivePolicy": redrive})
    sqs.create_queue(QueueName=settings.resp_queue)


def fresh_prefix() -> str:
    return unique_name("p")[3:]


async def test_missing_queues_name_the_fix(moto_endpoint: str) -> None:
    settings = moto_settings(moto_endpoint, prefix=fresh_prefix())
    with pytest.raises(PortError, match=r"req-queue.*facerec aws provision"):
        async with open_data_tier(settings):
            pass


async def test_open_data_tier_on_provisioned_resources(moto_endpoint: str) -> None:
    settings = moto_settings(moto_endpoint, prefix=fresh_prefix())
    provision(settings)
    async with open_data_tier(settings) as data:
        assert (data.inputs.name, data.requests.name, data.dead_letters.name) == (
            settings.in_bucket,
            settings.req_queue,
            settings.dlq,
        )
        # The size limit is the queue's own attribute, so oversized bodies fail before the network.
        assert data.requests.max_message_bytes == 1024
        assert data.responses.max_message_bytes > 1024  # SQS's default (256 KiB, 1 MiB since 2025)
        await data.inputs.put("x.jpg", b"jpeg", "image/jpeg")
        assert await data.inputs.get("x.jpg") == b"jpeg"
        with pytest.raises(BlobNotFound):
            await data.outputs.get("x")
        await data.requests.send('{"id": "1"}')
        [message] = await data.requests.receive(10, wait_seconds=1)
        await data.requests.delete_batch([message.receipt])
        for port in (data.inputs, data.outputs, data.requests, data.responses, data.dead_letters):
            await port.check()


async def test_batches_beyond_ten_are_chunked(moto_endpoint: str) -> None:
    name = unique_name("q")
    boto3_client("sqs", moto_endpoint).create_queue(QueueName=name)
    async with moto_clients(moto_endpoint) as aws:
        queue = await SqsQueue.from_name(aws, name)
        bodies = [f"b{i}" for i in range(27)]
        ids = await queue.send_batch(bodies)
        assert len(set(ids)) == 27
        held = []
        while len(held) < 27:
            batch = await queue.receive(10, wait_seconds=1, visibility_timeout=60)
            assert batch, "messages went missing"
            held += batch
        assert sorted(m.body for m in held) == sorted(bodies)
        await queue.change_visibility([m.receipt for m in held], 120)
        await queue.delete_batch([m.receipt for m in held])
        stats = await queue.stats()
        assert (stats.visible, stats.in_flight) == (0, 0)


async def test_fractional_wait_never_waits_longer_than_asked(moto_endpoint: str) -> None:
    name = unique_name("q")
    boto3_client("sqs", moto_endpoint).create_queue(QueueName=name)
    async with moto_clients(moto_endpoint) as aws:
        queue = await SqsQueue.from_name(aws, name)
        started = time.monotonic()
        assert await queue.receive(10, wait_seconds=0.9) == []
        assert time.monotonic() - started < 0.8


async def test_missing_bucket_is_a_port_error_not_a_missing_key(moto_endpoint: str) -> None:
    async with moto_clients(moto_endpoint) as aws:
        store = S3BlobStore(aws, unique_name("nobucket"))
        with pytest.raises(PortError):
            await store.check()
        with pytest.raises(PortError):
            await store.get("k")


def _refuse() -> None:
    raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")


class _Unreachable:
    """Stands in for an aioboto3 client whose endpoint refuses connections (a real one retries for ~15 s)."""

    def __getattr__(self, operation: str) -> Callable[..., Awaitable[Any]]:
        async def call(*_: Any, **__: Any) -> Any:
            _refuse()

        return call

    def get_paginator(self, operation: str) -> Any:
        async def pages(**_: Any) -> AsyncIterator[Any]:
            _refuse()
            yield {}

        return SimpleNamespace(paginate=pages)


class _UnreachableClients:
    async def s3(self) -> Any:
        return _Unreachable()

    async def sqs(self) -> Any:
        return _Unreachable()


async def test_connection_failures_are_port_errors() -> None:
    aws: Any = _UnreachableClients()
    store = S3BlobStore(aws, "bucket")
    queue = SqsQueue(aws, "http://127.0.0.1:9/123/q")
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.put("k", b"x"),
        lambda: store.get("k"),
        lambda: store.delete("k"),
        store.list,
        store.count,
        store.check,
        lambda: queue.send("x"),
        lambda: queue.send_batch(["x"]),
        queue.receive,
        lambda: queue.delete_batch(["r"]),
        lambda: queue.change_visibility(["r"], 0),
        queue.stats,
        queue.check,
    ]
    for call in calls:
        with pytest.raises(PortError, match="Could not connect"):
            await call()


async def test_sessions_share_one_data_loader_so_service_models_are_read_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from botocore import loaders

    from facerec.adapters.aws_session import AwsClients, shared_data_loader

    settings = Settings(aws_region="us-east-1", aws_endpoint_url="http://127.0.0.1:9")  # no call is made
    async with AwsClients(settings) as aws:  # whatever this process had not read yet, read once here
        await aws.s3(), await aws.sqs(), await aws.ec2()
    paths = list(shared_data_loader().search_paths)
    reads: list[str] = []
    original = loaders.JSONFileLoader.load_file

    def counting(self: loaders.JSONFileLoader, file_path: str) -> Any:
        reads.append(file_path)
        return original(self, file_path)

    monkeypatch.setattr(loaders.JSONFileLoader, "load_file", counting)
    for _ in range(2):
        async with AwsClients(settings) as aws:
            await aws.s3(), await aws.sqs(), await aws.ec2()
    assert reads == []  # new sessions, new clients: no service model parsed again
    assert shared_data_loader().search_paths == paths  # and the loader's search path does not grow per session
