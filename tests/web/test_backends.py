"""The web tier on the real adapters: the local SQLite + directory data tier, and the AWS adapters against
a moto server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from facerec import backend
from facerec.settings import Settings
from facerec.testing import digest_name, jpeg_bytes
from tests.aws import create_aws_resources
from tests.web.harness import running_web, upload

pytestmark = pytest.mark.slow


async def _round_trip(count: int, **settings: Any) -> None:
    images = [jpeg_bytes((20 * i, 100, 200 - 20 * i)) for i in range(10)]
    # Every answer is checked, not how fast it came: the harness's 5 s deadline answered some of 30 requests
    # through moto with a 504 on a machine busy with a benchmark beside two test processes.
    settings.setdefault("request_deadline_s", 60.0)
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


async def test_aws_backend_round_trip_on_moto(endpoint: str) -> None:
    settings: dict[str, Any] = {"backend": "aws", "aws_endpoint_url": endpoint, "web_poll_wait_s": 1.0}
    create_aws_resources(Settings(**settings))
    # moto's server is slow per round trip: a few dozen requests prove the wiring.
    await _round_trip(30, **settings)


async def test_aws_store_failure_is_503_naming_it_then_recovers(endpoint: str) -> None:
    import boto3

    settings: dict[str, Any] = {"backend": "aws", "aws_endpoint_url": endpoint, "web_poll_wait_s": 1.0}
    config = Settings(**settings)
    create_aws_resources(config)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=config.aws_region)
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
