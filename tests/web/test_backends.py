"""The web tier on the real adapters: the local SQLite + directory data tier, and the AWS adapters against
a moto server on 127.0.0.1. Skipped until `facerec.backend` exists."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from facerec.bench.web import digest_name
from facerec.settings import Settings
from tests.conftest import jpeg_bytes
from tests.web.harness import running_web, upload

backend = pytest.importorskip("facerec.backend", reason="facerec.backend (open_data_tier) is not written yet")

pytestmark = pytest.mark.slow


@pytest.fixture
def moto_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    # Dummy values for moto only; never real credentials.
    for variable, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(variable, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto keeps its state per process, not per server: start each test from nothing.
    httpx.post(f"http://{host}:{port}/moto-api/reset").raise_for_status()
    yield f"http://{host}:{port}"
    server.stop()


def create_aws_resources(settings: Settings) -> None:
    import boto3

    kwargs: dict[str, Any] = {"endpoint_url": settings.aws_endpoint_url, "region_name": settings.aws_region}
    s3 = boto3.client("s3", **kwargs)
    for bucket in (settings.in_bucket, settings.out_bucket, settings.gallery_bucket):
        s3.create_bucket(Bucket=bucket)
    sqs = boto3.client("sqs", **kwargs)
    dlq_url = sqs.create_queue(QueueName=settings.dlq)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(settings.max_receives)})
    sqs.create_queue(
        QueueName=settings.req_queue,
        Attributes={
            "MaximumMessageSize": str(settings.message_max_bytes),
            "VisibilityTimeout": str(int(settings.visibility_timeout_s)),
            "RedrivePolicy": redrive,
        },
    )
    sqs.create_queue(QueueName=settings.resp_queue)


async def _round_trip(count: int, **settings: Any) -> None:
    images = [jpeg_bytes((20 * i, 100, 200 - 20 * i)) for i in range(10)]
    async with running_web(data_tier=backend.open_data_tier, **settings) as web:
        replies = await asyncio.gather(
            *(web.client.post("/", **upload(images[i % 10], f"img_{i}.jpg")) for i in range(count))
        )
        ready = await web.client.get("/readyz")
        assert web.in_flight == 0
        assert await web.data.inputs.count() == count
    assert [reply.text for reply in replies] == [f"img_{i}:{digest_name(images[i % 10])}" for i in range(count)]
    assert ready.status_code == 200, ready.text


async def test_local_backend_round_trip(tmp_path: Path) -> None:
    await _round_trip(200, backend="local", data_dir=tmp_path, web_poll_wait_s=1.0)


async def test_aws_backend_round_trip_on_moto(moto_endpoint: str) -> None:
    settings: dict[str, Any] = {"backend": "aws", "aws_endpoint_url": moto_endpoint, "web_poll_wait_s": 1.0}
    create_aws_resources(Settings(**settings))
    # moto's server is slow per round trip: a few dozen requests prove the wiring.
    await _round_trip(30, **settings)


async def test_aws_store_failure_is_503_naming_it_then_recovers(moto_endpoint: str) -> None:
    import boto3

    settings: dict[str, Any] = {"backend": "aws", "aws_endpoint_url": moto_endpoint, "web_poll_wait_s": 1.0}
    config = Settings(**settings)
    create_aws_resources(config)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=config.aws_region)
    async with running_web(data_tier=backend.open_data_tier, **settings) as web:
        assert (await web.client.post("/", **upload(jpeg_bytes(), "a.jpg"))).status_code == 200
        for item in s3.list_objects_v2(Bucket=config.in_bucket).get("Contents", []):
            s3.delete_object(Bucket=config.in_bucket, Key=item["Key"])
        s3.delete_bucket(Bucket=config.in_bucket)  # S3 now answers NoSuchBucket

        down = await web.client.post("/", **upload(jpeg_bytes(), "b.jpg"))
        assert down.status_code == 503 and "image store" in down.text
        ready = await web.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["inputs"].startswith("unavailable")

        s3.create_bucket(Bucket=config.in_bucket)
        assert (await web.client.get("/readyz")).status_code == 200
        assert (await web.client.post("/", **upload(jpeg_bytes(), "c.jpg"))).status_code == 200
