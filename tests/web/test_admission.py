"""Admission by bytes: a POST that would take the web tier past `max_inflight_bytes` gets 503 + Retry-After
(its body drained, not left half-sent), and an upload's bytes are given back as soon as it is stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from facerec.testing import jpeg_bytes
from facerec.web.admission import ByteBudget
from tests.web.harness import never_answer, running_web, wait_until

PHOTO = jpeg_bytes((150, 150, 20))
BOUNDARY = "adm"


def body() -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="inputFile"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + PHOTO
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def headers(size: int) -> dict[str, str]:
    return {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Content-Length": str(size)}


async def test_a_post_past_the_byte_budget_is_503_with_retry_after_until_bytes_are_given_back() -> None:
    payload = body()
    resume = asyncio.Event()

    async def slow_upload() -> AsyncIterator[bytes]:
        yield payload[:100]
        await resume.wait()  # the first upload is still arriving: its bytes are held
        yield payload[100:]

    async with running_web(max_inflight_bytes=len(payload) + len(payload) // 2) as web:
        budget: ByteBudget = web.app.state.upload_budget
        first = asyncio.create_task(web.client.post("/", content=slow_upload(), headers=headers(len(payload))))
        await wait_until(lambda: budget.held > 0)
        refused = await web.client.post("/", content=payload, headers=headers(len(payload)))
        small = await web.client.get("/healthz")  # only POST bodies count
        resume.set()
        answered = await first
        after = await web.client.post("/", content=payload, headers=headers(len(payload)))
        metrics = (await web.client.get("/metrics")).text
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.headers["x-request-id"] in refused.text  # a 5xx names the request id
    assert small.status_code == 200
    assert answered.status_code == 200 and after.status_code == 200
    assert budget.held == 0
    assert "facerec_upload_bytes_in_flight 0.0" in metrics


async def test_a_stored_upload_is_given_back_while_its_request_still_waits() -> None:
    payload = body()
    async with running_web(answer=never_answer, request_deadline_s=30, max_inflight_bytes=len(payload)) as web:
        budget: ByteBudget = web.app.state.upload_budget
        waiting = asyncio.create_task(web.client.post("/", content=payload, headers=headers(len(payload))))
        await wait_until(lambda: web.in_flight == 1 and len(web.data.inputs.objects) == 1)  # type: ignore[attr-defined]
        # Only the multipart framing is still held: the photo's bytes went back once it was stored.
        await wait_until(lambda: budget.held == len(payload) - len(PHOTO))
        second = await web.client.post("/", content=payload, headers=headers(len(payload)))
        waiting.cancel()
    assert second.status_code == 503  # the framing still held + a whole new body exceed this tiny budget
