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
from facerec.ports import Coordination, Lease, QueueNotFound, ReplyQueues, WebMember
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


async def test_reply_queues_create_open_list_delete(moto_endpoint: str, aws: AwsClients) -> None:
    settings = fresh(moto_endpoint)
    sqs = boto3_client("sqs", moto_endpoint)
    fixed_url = sqs.get_queue_url(QueueName=settings.resp_queue)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=fixed_url, Attributes={"MessageRetentionPeriod": "600"})
    replies = await replies_of(aws, settings)
    assert isinstance(replies, ReplyQueues)
    name_a, name_b = settings.reply_queue(WEB_A), settings.reply_queue(WEB_B)
    assert await replies.list() == []

    queue = await replies.create(name_a)
    assert (await replies.create(name_a)).url == queue.url  # idempotent
    await replies.create(name_b)
    # Another deployment whose prefix starts the same is not ours.
    sqs.create_queue(QueueName=f"{settings.prefix}-resp-{WEB_A}x")
    assert await replies.list() == [name_a, name_b]
    # The response queue's attributes, so the same limits.
    attributes = sqs.get_queue_attributes(QueueUrl=queue.url, AttributeNames=["All"])["Attributes"]
    assert attributes["MessageRetentionPeriod"] == "600"

    # A worker's view: another client opens it by name and answers on it.
    async with moto_clients(moto_endpoint) as worker_aws:
        worker_side = await replies_of(worker_aws, settings)
        opened = await worker_side.open(name_a)
        assert await worker_side.open(name_a) is opened  # cached
        await opened.send_batch(['{"id": "1"}', '{"id": "2"}'])
        received = await queue.receive(10, wait_seconds=1)
        assert sorted(m.body for m in received) == ['{"id": "1"}', '{"id": "2"}']

        await replies.delete(name_a)
        await replies.delete(name_a)  # a missing queue is not an error
        assert await replies.list() == [name_b]
        with pytest.raises(QueueNotFound):
            await worker_side.open(settings.reply_queue("c" * 12))
        # The cached handle of a deleted queue: QueueNotFound (the worker acknowledges), and it is forgotten.
        with pytest.raises(QueueNotFound):
            await opened.send('{"id": "3"}')
        with pytest.raises(QueueNotFound):
            await worker_side.open(name_a)


async def test_reply_queues_refuse_other_names(moto_endpoint: str, aws: AwsClients) -> None:
    settings = fresh(moto_endpoint)
    replies = await replies_of(aws, settings)
    for name in (settings.resp_queue, settings.req_queue, "other-resp-aaaaaaaaaaaa", f"{settings.prefix}-resp-x"):
        with pytest.raises(ValueError, match="not a per-process reply queue"):
            await replies.create(name)
        with pytest.raises(QueueNotFound):
            await replies.open(name)


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


def member(web_id: str, in_flight: int = 0, at: float = 1000.0) -> WebMember:
    return WebMember(web_id, f"p-resp-{web_id}", in_flight, at, "10.0.0.1:8000", 42)


async def test_membership(moto_endpoint: str, aws: AwsClients) -> None:
    settings = fresh(moto_endpoint)
    coordination = S3Coordination(aws, settings.gallery_bucket)
    assert isinstance(coordination, Coordination)
    await coordination.check()
    assert await coordination.members() == []
    await coordination.heartbeat(member(WEB_B, 3))
    await coordination.heartbeat(member(WEB_A, 1))
    await coordination.heartbeat(member(WEB_A, 2, at=1001.0))  # replaces
    assert await coordination.members() == [member(WEB_A, 2, at=1001.0), member(WEB_B, 3)]
    await coordination.leave(WEB_A)
    await coordination.leave(WEB_A)  # a missing one is not an error
    assert await coordination.members() == [member(WEB_B, 3)]
    with pytest.raises(ValueError):
        await coordination.heartbeat(member("../../x"))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_lease_acquire_renew_expire_release(moto_endpoint: str, aws: AwsClients) -> None:
    settings = fresh(moto_endpoint)
    clock = Clock()
    coordination = S3Coordination(aws, settings.gallery_bucket, clock=clock)
    name = f"reply:{settings.resp_queue}"
    first = await coordination.acquire(name, WEB_A, 3.0)
    assert first == Lease(name, WEB_A, clock.now + 3.0, 1)
    assert await coordination.acquire(name, WEB_B, 3.0) is None  # live: another holder's
    clock.now += 2
    renewed = await coordination.acquire(name, WEB_A, 3.0)
    assert renewed == Lease(name, WEB_A, clock.now + 3.0, 1)  # renewal: same token
    clock.now += 3.5
    taken = await coordination.acquire(name, WEB_B, 3.0)  # expired: anyone may take it
    assert taken == Lease(name, WEB_B, clock.now + 3.0, 2)
    assert await coordination.acquire(name, WEB_A, 3.0) is None
    await coordination.release(name, WEB_A)  # not the holder: nothing happens
    assert await coordination.acquire(name, WEB_A, 3.0) is None
    await coordination.release(name, WEB_B)
    assert await coordination.acquire(name, WEB_A, 3.0) == Lease(name, WEB_A, clock.now + 3.0, 3)
    assert [lease.holder for lease in await coordination.leases()] == [WEB_A]
    # Two leases are independent objects.
    assert await coordination.acquire("scaler", WEB_B, 3.0) == Lease("scaler", WEB_B, clock.now + 3.0, 1)


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
