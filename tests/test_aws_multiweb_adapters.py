"""The AWS adapters of several web processes (#15) on moto: per-process reply queues on SQS, and membership and
leases as conditional writes under `_deployment/` in the gallery bucket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from facerec.adapters.aws_session import AwsClients
from facerec.adapters.s3_blob import S3BlobStore
from facerec.adapters.s3_coordination import LEASES_PREFIX, S3Coordination, lease_key
from facerec.adapters.sqs_queue import SqsQueue
from facerec.adapters.sqs_replies import SqsReplyQueues
from facerec.api_keys import create_key, list_keys
from facerec.backend import open_data_tier
from facerec.people import enrolled_people
from facerec.ports import Lease, WebMember
from facerec.settings import Settings
from tests.aws import boto3_client, create_aws_resources, moto_clients, moto_settings, unique_name

WEB_A, WEB_B = "a" * 12, "b" * 12


def fresh(endpoint: str) -> Settings:
    settings = moto_settings(endpoint, prefix=unique_name("p")[3:])
    create_aws_resources(settings)
    return settings


@pytest.fixture
async def aws(moto_endpoint: str) -> AsyncIterator[AwsClients]:
    async with moto_clients(moto_endpoint) as clients:
        yield clients


async def replies_of(aws: AwsClients, settings: Settings) -> SqsReplyQueues:
    return SqsReplyQueues(aws, settings, await SqsQueue.from_name(aws, settings.resp_queue))


# --- reply queues -----------------------------------------------------------------------------------


async def test_reply_queues_take_the_response_queues_attributes(moto_endpoint: str, aws: AwsClients) -> None:
    settings = fresh(moto_endpoint)
    sqs = boto3_client("sqs", moto_endpoint)
    fixed_url = sqs.get_queue_url(QueueName=settings.resp_queue)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=fixed_url, Attributes={"MessageRetentionPeriod": "600", "VisibilityTimeout": "7"})
    queue = await (await replies_of(aws, settings)).create(settings.reply_queue(WEB_A))
    attributes = sqs.get_queue_attributes(QueueUrl=queue.url, AttributeNames=["All"])["Attributes"]
    assert (attributes["MessageRetentionPeriod"], attributes["VisibilityTimeout"]) == ("600", "7")


async def test_list_follows_pages(moto_endpoint: str, aws: AwsClients, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fresh(moto_endpoint)
    replies = await replies_of(aws, settings)
    names = [settings.reply_queue(f"{i:012x}") for i in range(5)]
    for name in names:
        await replies.create(name)
    # moto returns every queue at once: page its answer as SQS does (MaxResults, NextToken).
    sqs = await aws.sqs()
    every = sqs.list_queues
    asked: list[dict[str, Any]] = []

    async def paged(**request: Any) -> dict[str, Any]:
        asked.append(request)
        urls = (await every(QueueNamePrefix=request["QueueNamePrefix"]))["QueueUrls"]
        start, size = int(request.get("NextToken", 0)), request["MaxResults"]
        page: dict[str, Any] = {"QueueUrls": urls[start : start + size]}
        if start + size < len(urls):
            page["NextToken"] = str(start + size)
        return page

    monkeypatch.setattr(sqs, "list_queues", paged)
    monkeypatch.setattr("facerec.adapters.sqs_replies.LIST_PAGE", 2)
    assert await replies.list() == names
    assert len(asked) == 3  # 5 reply queues and the fixed one, 2 a page


# --- coordination -----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def member(web_id: str) -> WebMember:
    return WebMember(web_id, f"p-resp-{web_id}", 0, 1000.0, "10.0.0.1:8000", 42)


async def test_exactly_one_of_two_racing_clients_wins(moto_endpoint: str) -> None:
    """Both read the same state and both write: S3's conditional write lets one through. Checked for a free
    lease (If-None-Match: *) and an expired one (If-Match: the ETag both read)."""
    settings = fresh(moto_endpoint)
    puts: list[str] = []

    def record(service: str, operation: str, params: Mapping[str, Any]) -> None:
        if operation == "PutObject" and str(params.get("Key", "")).startswith(LEASES_PREFIX):
            puts.append(str(params["Key"]))

    async with (
        AwsClients(settings, on_call=record) as one,
        AwsClients(settings, on_call=record) as two,
    ):
        first, second = S3Coordination(one, settings.gallery_bucket), S3Coordination(two, settings.gallery_bucket)
        for round_ in range(4):
            name = f"race-{round_}"
            if round_ % 2:  # an expired lease of a third process, taken over by both at once
                assert await first.acquire(name, "c" * 12, 0.0) is not None
            puts.clear()
            won = await asyncio.gather(first.acquire(name, WEB_A, 30.0), second.acquire(name, WEB_B, 30.0))
            assert puts == [lease_key(name)] * 2, "both must have reached the conditional write"
            winners = [lease for lease in won if lease is not None]
            assert len(winners) == 1, won
            # What S3 keeps is the winner's lease.
            assert await first.acquire(name, "d" * 12, 30.0) is None
            assert await (first if winners[0].holder == WEB_A else second).acquire(name, winners[0].holder, 30.0)


async def test_deployment_objects_do_not_show_as_people_or_keys(moto_endpoint: str, aws: AwsClients) -> None:
    settings = fresh(moto_endpoint)
    coordination = S3Coordination(aws, settings.gallery_bucket)
    gallery = S3BlobStore(aws, settings.gallery_bucket)
    _, record = await create_key(gallery, "manage")
    await coordination.heartbeat(member(WEB_A))
    assert await coordination.acquire("scaler", WEB_A, 3.0) is not None
    assert await enrolled_people(gallery) == {}
    assert [key.id for key in await list_keys(gallery)] == [record.id]


async def test_the_aws_data_tier_has_replies_and_coordination(moto_endpoint: str) -> None:
    settings = fresh(moto_endpoint)
    async with open_data_tier(settings) as data:
        assert isinstance(data.replies, SqsReplyQueues)
        assert isinstance(data.coordination, S3Coordination)
        assert data.coordination.bucket == settings.gallery_bucket
        queue = await data.replies.create(settings.reply_queue(WEB_A))
        assert queue.max_message_bytes == data.responses.max_message_bytes
        await data.replies.delete(queue.name)


def test_aws_leases_and_heartbeats_allow_for_s3_round_trips() -> None:
    """S3 between machines: a longer scaler lease, heartbeat period and stale threshold on AWS, unless set."""
    aws, local = Settings(backend="aws"), Settings(backend="local")
    assert (aws.lease_ttl_s, aws.web_stale_s, aws.web_heartbeat_s) == (10.0, 15.0, 5.0)
    assert (local.lease_ttl_s, local.web_stale_s, local.web_heartbeat_s) == (3.0, 5.0, 1.0)
    chosen = Settings(backend="aws", lease_ttl_s=2, web_stale_s=4, web_heartbeat_s=0.5)
    assert (chosen.lease_ttl_s, chosen.web_stale_s, chosen.web_heartbeat_s) == (2, 4, 0.5)
    # A live process heartbeats (and renews its fixed-queue lease, whose TTL is web_stale_s) 3 times per TTL.
    assert aws.web_stale_s >= 3 * aws.web_heartbeat_s


async def test_a_renewal_is_one_conditional_write(moto_endpoint: str) -> None:
    """The holder renews on the ETag of its own last write (no read); once another process took the lease over,
    that write fails and the holder reads and loses, as it must."""
    settings = fresh(moto_endpoint)
    calls: list[str] = []

    def record(service: str, operation: str, params: Mapping[str, Any]) -> None:
        calls.append(operation)

    clock = Clock()
    async with AwsClients(settings, on_call=record) as one, moto_clients(moto_endpoint) as two:
        first = S3Coordination(one, settings.gallery_bucket, clock=clock)
        other = S3Coordination(two, settings.gallery_bucket, clock=clock)
        assert await first.acquire("scaler", WEB_A, 3.0) is not None
        calls.clear()
        clock.now += 1
        assert await first.acquire("scaler", WEB_A, 3.0) == Lease("scaler", WEB_A, clock.now + 3.0, 1)
        assert calls == ["PutObject"]
        clock.now += 10  # expired: the other process takes it over
        assert await other.acquire("scaler", WEB_B, 3.0) == Lease("scaler", WEB_B, clock.now + 3.0, 2)
        assert await first.acquire("scaler", WEB_A, 3.0) is None
        assert (await first.lease("scaler")) == Lease("scaler", WEB_B, clock.now + 3.0, 2)
