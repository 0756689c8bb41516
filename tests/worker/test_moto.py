"""The worker on the AWS adapters (S3 and SQS on a moto server): a mixed batch gets one correct response each."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from facerec.backend import open_data_tier
from facerec.settings import Settings
from facerec.worker.loop import Worker
from tests.aws import create_aws_resources
from tests.worker.fakes import FakeRecognizer, collect, faceless_photo, photo_of, submit

pytestmark = pytest.mark.slow


async def test_mixed_batch_on_s3_and_sqs(endpoint: str) -> None:
    settings = Settings(
        backend="aws", aws_endpoint_url=endpoint, worker_poll_wait_s=1.0, batch_fill_wait_ms=200, batch_max=8
    )
    create_aws_resources(settings)
    async with open_data_tier(settings) as data:
        cases: list[tuple[str, bytes, Any]] = [
            ("paul.jpg", photo_of("Paul"), "Paul"),
            ("ana.jpg", photo_of("Ana"), "Ana"),
            ("nobody.jpg", faceless_photo(), "NoFace"),
            ("notes.jpg", b"not an image", "not_an_image"),
        ]
        requests = [await submit(data, filename, image) for filename, image, _ in cases]
        stop = asyncio.Event()
        worker = Worker(data, FakeRecognizer(), settings, name="moto-worker")
        task = asyncio.create_task(worker.run(stop))
        try:
            responses = await collect(data, {r.id for r in requests}, within_s=30)
        finally:
            stop.set()
            await task
        by_id = {r.id: r for r in responses}
        for request, (_, _, expected) in zip(requests, cases, strict=True):
            response = by_id[request.id]
            got = response.result.name if response.result is not None else response.error.code  # type: ignore[union-attr]
            assert got == expected
        assert await data.outputs.get(requests[0].output_key) == b"Paul"
        stats = await data.requests.stats()
        assert (stats.visible, stats.in_flight) == (0, 0)
