"""Futures, the response poller, deadlines, disconnects, overload and failing ports."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from facerec.messages import (
    ErrorCode,
    RecognitionRequest,
    RecognitionResponse,
    RecognitionResult,
    ResponseError,
)
from facerec.recognition.results import NO_FACE
from facerec.testing import answer_by_digest, digest_name, jpeg_bytes
from tests.web.harness import Switch, flaky_data_tier, never_answer, running_web, upload, wait_until

PHOTO = jpeg_bytes((200, 30, 30))


async def test_1000_concurrent_requests_each_get_their_own_answer() -> None:
    images = [jpeg_bytes((25 * i, 255 - 20 * i, 90)) for i in range(10)]
    assert len({digest_name(image) for image in images}) == 10
    # The deadline is generous: this is about whose answer each request gets, and 1000 uploads through one
    # event loop on a busy machine can take longer than the harness's usual 5 s.
    async with running_web(max_in_flight=2000, request_deadline_s=120) as web:
        # Same filename for all: concurrent uploads with one name must not steal each other's answers.
        replies = await asyncio.gather(
            *(web.client.post("/v1/recognitions", **upload(images[i % 10], "same.jpg")) for i in range(1000))
        )
        assert web.in_flight == 0
        assert await web.data.inputs.count() == 1000
        assert (await web.data.responses.stats()).visible == 0
    assert [reply.status_code for reply in replies] == [200] * 1000
    assert [reply.json()["name"] for reply in replies] == [digest_name(images[i % 10]) for i in range(1000)]
    assert len({reply.json()["request_id"] for reply in replies}) == 1000


async def test_unknown_late_and_invalid_responses_are_acknowledged_and_harmless() -> None:
    async with running_web() as web:
        stray = RecognitionResponse(id="f" * 32, result=RecognitionResult(name="Nobody"))
        await web.data.responses.send(stray.to_json())
        await web.data.responses.send("not json at all")
        first = await web.client.post("/v1/recognitions", **upload(PHOTO, "a.jpg"))
        # The answer of a finished request delivered again (twice), as an at-least-once queue may.
        late = RecognitionResponse(id=first.json()["request_id"], result=RecognitionResult(name="Late"))
        await web.data.responses.send_batch([late.to_json(), late.to_json()])
        second = await web.client.post("/", **upload(PHOTO, "b.jpg"))
        await wait_until(lambda: web.app.state.poller.dropped >= 4)
        stats = await web.data.responses.stats()
        assert web.in_flight == 0
    assert first.json()["name"] == digest_name(PHOTO) and second.text == f"b:{digest_name(PHOTO)}"
    assert stats.visible == 0 and stats.in_flight == 0


async def test_duplicate_answers_for_a_live_request_resolve_it_once() -> None:
    async with running_web(answer=None) as web:
        task = asyncio.create_task(web.client.post("/v1/recognitions", **upload(PHOTO)))
        [message] = await _receive_request(web)
        request = RecognitionRequest.model_validate_json(message.body)
        answers = [
            RecognitionResponse(id=request.id, result=RecognitionResult(name=name)).to_json()
            for name in ("First", "Second")
        ]
        await web.data.responses.send_batch(answers)
        reply = await task
        await wait_until(lambda: web.app.state.poller.dropped == 1)
    assert reply.json()["name"] == "First"


async def _receive_request(web: Any) -> list[Any]:
    async with asyncio.timeout(5):
        while True:
            messages = await web.data.requests.receive(wait_seconds=0.5)
            if messages:
                return messages


async def test_deadline_is_504_and_forgets_the_request() -> None:
    async with running_web(answer=never_answer, request_deadline_s=0.3) as web:
        started = time.monotonic()
        plain = await web.client.post("/", **upload(PHOTO))
        as_json = await web.client.post("/v1/recognitions", **upload(PHOTO))
        assert web.in_flight == 0
    assert plain.status_code == 504 and "0.3 s" in plain.text
    assert as_json.status_code == 504 and as_json.json()["error"]["code"] == "deadline_exceeded"
    assert time.monotonic() - started < 3


async def test_client_disconnect_does_not_leak_its_future() -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="inputFile"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + PHOTO + b"\r\n--b--\r\n"
    )
    async with running_web(answer=never_answer, request_deadline_s=30) as web:
        hang_up = asyncio.Event()
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict:
            if messages:
                return messages.pop()
            await hang_up.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            return None

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/",
            "raw_path": b"/",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"multipart/form-data; boundary=b")],
            "client": ("127.0.0.1", 1),
            "server": ("web", 80),
            "state": {},
        }
        handler = asyncio.create_task(web.app(scope, receive, send))
        await wait_until(lambda: web.in_flight == 1)
        hang_up.set()
        async with asyncio.timeout(2):  # far less than the 30 s deadline
            await handler
        assert web.in_flight == 0


async def test_overload_is_503_with_retry_after() -> None:
    async with running_web(answer=never_answer, max_in_flight=2, request_deadline_s=2) as web:
        waiting = [asyncio.create_task(web.client.post("/", **upload(PHOTO))) for _ in range(2)]
        await wait_until(lambda: web.in_flight == 2)
        refused = await web.client.post("/v1/recognitions", **upload(PHOTO))
        assert web.in_flight == 2
        for task in waiting:
            task.cancel()
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"


async def test_store_or_queue_down_is_503_naming_it_then_recovers() -> None:
    store, queue = Switch(), Switch()
    async with running_web(data_tier=flaky_data_tier(store, queue)) as web:
        store.failing = True
        no_store = await web.client.post("/", **upload(PHOTO))
        store.failing, queue.failing = False, True
        no_queue = await web.client.post("/v1/recognitions", **upload(PHOTO))
        not_ready = await web.client.get("/readyz")
        queue.failing = False
        recovered = await web.client.post("/", **upload(PHOTO))
        ready = await web.client.get("/readyz")
        orphans = await web.data.inputs.count()
    assert no_store.status_code == 503 and "image store unavailable" in no_store.text
    assert no_store.headers["retry-after"] == "1"
    assert no_queue.status_code == 503 and "request queue unavailable" in no_queue.json()["error"]["message"]
    assert not_ready.status_code == 503 and not_ready.json()["checks"]["requests"].startswith("unavailable")
    assert recovered.status_code == 200 and ready.status_code == 200
    assert orphans == 1  # the input of the request that could not be queued was removed


async def test_response_poller_survives_failures() -> None:
    responses = Switch(frozenset({"receive"}))  # the web tier's side only; the fake worker still sends
    responses.failing = True
    async with running_web(data_tier=flaky_data_tier(Switch(), Switch(), responses)) as web:
        pending = asyncio.create_task(web.client.post("/", **upload(PHOTO)))
        await asyncio.sleep(0.4)  # several failed polls, with backoff
        assert not pending.done() and web.app.state.poller.running
        responses.failing = False
        reply = await pending
    assert reply.status_code == 200


async def test_dead_lettered_request_is_502_not_a_hang() -> None:
    async with running_web(
        answer=never_answer, visibility_timeout_s=0.05, max_receives=2, request_deadline_s=10
    ) as web:
        started = time.monotonic()
        reply = await web.client.post("/v1/recognitions", **upload(PHOTO))
        assert (await web.data.dead_letters.stats()).visible == 0  # acknowledged
    assert reply.status_code == 502
    assert reply.json()["error"] == {
        "code": "dead_lettered",
        "message": "processing failed repeatedly",
        "request_id": reply.headers["x-request-id"],
    }
    assert time.monotonic() - started < 5


async def test_worker_errors_map_to_http_statuses() -> None:
    outcomes = {
        b"A": ErrorCode.NOT_AN_IMAGE,
        b"B": ErrorCode.IMAGE_TOO_LARGE,
        b"C": ErrorCode.PROCESSING_FAILED,
        b"D": ErrorCode.DEADLINE_EXCEEDED,
    }

    def answer(request: RecognitionRequest, data: bytes) -> RecognitionResponse:
        code = outcomes.get(data[-1:])
        if code is None:
            return RecognitionResponse(id=request.id, result=RecognitionResult(name=NO_FACE, no_face=True))
        return RecognitionResponse(id=request.id, error=ResponseError(code=code, message="worker says no"))

    async with running_web(answer=answer) as web:
        statuses = {
            tag: (await web.client.post("/", **upload(PHOTO + tag))).status_code for tag in (b"A", b"B", b"C", b"D")
        }
        no_face = await web.client.post("/", **upload(PHOTO + b"Z", "empty_room.jpg"))
        no_face_json = await web.client.post("/v1/recognitions", **upload(PHOTO + b"Z"))
    assert statuses == {b"A": 415, b"B": 413, b"C": 502, b"D": 504}
    assert no_face.status_code == 200 and no_face.text == "empty_room:NoFace"
    assert no_face_json.json()["no_face"] is True


async def test_unexpected_failure_is_500_without_traceback() -> None:
    def explode(request: RecognitionRequest, data: bytes) -> RecognitionResponse:
        return answer_by_digest(request, data)

    async with running_web(answer=explode) as web:
        web.app.state.gateway._data = None  # any bug in the round trip
        plain = await web.client.post("/", **upload(PHOTO))
        as_json = await web.client.post("/v1/recognitions", **upload(PHOTO))
        assert web.in_flight == 0
    assert plain.status_code == 500 and "Traceback" not in plain.text and "internal error" in plain.text
    assert as_json.status_code == 500 and as_json.json()["error"]["code"] == "internal_error"
