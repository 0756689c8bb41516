"""The worker loop on the in-process adapters with a fake recognizer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest

from facerec.messages import ErrorCode
from facerec.ports import PortError
from facerec.worker.loop import Worker
from tests.worker.fakes import (
    POISON,
    FakeRecognizer,
    collect,
    faceless_photo,
    make_settings,
    memory_tier,
    photo_of,
    submit,
)


@contextlib.asynccontextmanager
async def running(worker: Worker):
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def test_mixed_batch_gets_one_correct_response_per_request() -> None:
    data = memory_tier()
    recognizer = FakeRecognizer()
    paul = await submit(data, "test_00.jpg", photo_of("Paul"))
    ana = await submit(data, "dir/test_01.png", photo_of("Ana"))
    nobody = await submit(data, "empty.jpg", faceless_photo())
    garbage = await submit(data, "notes.jpg", b"this is not an image")
    missing = await submit(data, "gone.jpg", None)
    expired = await submit(data, "late.jpg", photo_of("Bo"), deadline=time.time() - 1)
    await data.requests.send(json.dumps({"v": 1, "id": "f" * 32, "input_key": 5}))  # invalid, answerable
    await data.requests.send("{not json")  # invalid, no id: logged and dropped
    worker = Worker(data, recognizer, make_settings(), name="w-test")

    async with running(worker):
        responses = await collect(data, expected=7)

    by_id = {r.id: r for r in responses}
    assert len(responses) == 7 and len(by_id) == 7
    assert by_id[paul.id].result is not None and by_id[paul.id].result.name == "Paul"
    assert by_id[ana.id].result is not None and by_id[ana.id].result.name == "Ana"
    assert by_id[paul.id].result.box is not None and by_id[paul.id].timings is not None
    assert by_id[nobody.id].result is not None and by_id[nobody.id].result.no_face
    assert {rid: by_id[rid].error.code for rid in (garbage.id, missing.id, expired.id, "f" * 32)} == {
        garbage.id: ErrorCode.NOT_AN_IMAGE,
        missing.id: ErrorCode.INPUT_MISSING,
        expired.id: ErrorCode.DEADLINE_EXCEEDED,
        "f" * 32: ErrorCode.PROCESSING_FAILED,
    }
    assert all(r.worker == "w-test" for r in responses)
    # Results land in the out-bucket under the request's output key; errors store nothing.
    assert await data.outputs.get(paul.output_key) == b"Paul"
    assert await data.outputs.get(nobody.output_key) == b"NoFace"
    assert await data.outputs.count() == 3
    # Every request message was deleted; the invalid ones did not reach the recognizer.
    assert (await data.requests.stats()).visible == 0 and (await data.requests.stats()).in_flight == 0
    assert recognizer.batches == [4]
    assert "MainThread" not in recognizer.threads
    assert worker.stats.processed == 3 and worker.stats.errors == 4 and worker.stats.discarded == 1


async def test_batches_fill_across_receives_up_to_batch_max() -> None:
    data = memory_tier()
    recognizer = FakeRecognizer()
    for i in range(25):
        await submit(data, f"p{i}.jpg", photo_of("Bo"))
    worker = Worker(data, recognizer, make_settings(batch_max=16), name="w")

    async with running(worker):
        responses = await collect(data, expected=25)

    assert len({r.id for r in responses}) == 25
    assert recognizer.batches[0] == 16 and sum(recognizer.batches) == 25
    assert worker.stats.batches == 2


@pytest.mark.parametrize("prefetch", [True, False])
async def test_every_request_is_answered_with_and_without_prefetch(prefetch: bool) -> None:
    data = memory_tier()
    names = ["Paul", "Ana", "Bo"] * 20
    requests = [await submit(data, f"img{i}.jpg", photo_of(name)) for i, name in enumerate(names)]
    worker = Worker(data, FakeRecognizer(delay_s=0.001), make_settings(batch_max=8, worker_prefetch=prefetch))

    async with running(worker):
        responses = await collect(data, expected=len(requests))

    assert {r.id: r.result.name for r in responses if r.result} == {
        req.id: name for req, name in zip(requests, names, strict=True)
    }


async def test_crash_looping_message_ends_with_an_error_response_not_a_hang() -> None:
    data = memory_tier(max_receives=3)
    good = [await submit(data, f"ok{i}.jpg", photo_of("Ana")) for i in range(3)]
    poison = await submit(data, "poison.jpg", POISON)
    worker = Worker(data, FakeRecognizer(), make_settings(max_receives=3))

    async with running(worker):
        responses = await collect(data, expected=4, within_s=10)

    by_id = {r.id: r for r in responses}
    assert len(responses) == 4, "each request answered exactly once"
    assert all(by_id[req.id].result is not None and by_id[req.id].result.name == "Ana" for req in good)
    assert by_id[poison.id].error is not None and by_id[poison.id].error.code == ErrorCode.PROCESSING_FAILED
    assert (await data.requests.stats()).in_flight == 0
    assert (await data.dead_letters.stats()).visible == 0


async def test_slow_batch_keeps_its_messages_invisible() -> None:
    data = memory_tier(visibility_timeout=0.2)
    requests = [await submit(data, f"slow{i}.jpg", photo_of("Paul")) for i in range(4)]
    # 4 images x 0.15 s = 0.6 s of inference, three times the visibility timeout.
    worker = Worker(data, FakeRecognizer(delay_s=0.15), make_settings(visibility_timeout_s=0.2, batch_max=4))

    async with running(worker):
        responses = await collect(data, expected=len(requests))
        await asyncio.sleep(0.3)  # a redelivery, had one happened, would answer again now
        responses += await collect(data, expected=1, within_s=0.3)

    assert sorted(r.id for r in responses) == sorted(req.id for req in requests)
    assert worker.stats.visibility_extensions >= 4
    assert worker.stats.batches == 1


async def test_stop_finishes_the_batch_in_inference() -> None:
    data = memory_tier()
    recognizer = FakeRecognizer(delay_s=0.1)
    requests = [await submit(data, f"s{i}.jpg", photo_of("Bo")) for i in range(4)]
    worker = Worker(data, recognizer, make_settings(batch_max=4))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    assert await asyncio.to_thread(recognizer.started.wait, 5)
    stop.set()
    await asyncio.wait_for(task, timeout=5)

    responses = await collect(data, expected=len(requests), within_s=1)
    assert sorted(r.id for r in responses) == sorted(req.id for req in requests)
    assert (await data.requests.stats()).in_flight == 0


async def test_cancel_releases_held_messages_at_once() -> None:
    data = memory_tier(visibility_timeout=30)
    recognizer = FakeRecognizer(delay_s=1.0)
    await submit(data, "held.jpg", photo_of("Bo"))
    worker = Worker(data, recognizer, make_settings())
    task = asyncio.create_task(worker.run(asyncio.Event()))
    assert await asyncio.to_thread(recognizer.started.wait, 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    # Released with visibility 0: another worker can take it now, not after the 30 s timeout.
    redelivered = await data.requests.receive(10)
    assert len(redelivered) == 1 and redelivered[0].receive_count == 2
    assert worker.stats.released == 1


async def test_an_unavailable_store_delays_requests_but_loses_none() -> None:
    data = memory_tier(visibility_timeout=0.3)
    real_get, failures = data.inputs.get, [2]

    async def flaky_get(key: str) -> bytes:
        if failures[0] > 0:
            failures[0] -= 1
            raise PortError("store unavailable")
        return await real_get(key)

    data.inputs.get = flaky_get  # type: ignore[method-assign]
    request = await submit(data, "flaky.jpg", photo_of("Ana"))
    worker = Worker(data, FakeRecognizer(), make_settings(visibility_timeout_s=0.3))

    async with running(worker):
        responses = await collect(data, expected=1, within_s=5)

    assert [(r.id, r.result.name) for r in responses] == [(request.id, "Ana")]
    assert failures == [0]


class _TimedRecognizer(FakeRecognizer):
    """Reports fixed stage seconds for each whole batch, as the Recognizer's `last_stages`."""

    def recognize(self, images, wanted=None):  # type: ignore[no-untyped-def]
        outcomes = super().recognize(images, wanted)
        self.last_stages = {"decode": 0.4, "detect": 0.8}
        return outcomes


async def test_each_answer_carries_its_share_of_the_batch_stage_times() -> None:
    data = memory_tier()
    recognizer = _TimedRecognizer()
    requests = [await submit(data, f"p{i}.jpg", photo_of(name)) for i, name in enumerate(("Paul", "Ana", "Bo", "Paul"))]
    worker = Worker(data, recognizer, make_settings(), name="w-test")

    async with running(worker):
        responses = await collect(data, expected=len(requests))

    assert {r.id for r in responses} == {r.id for r in requests}
    shares = {round(0.4 / size, 6) for size in recognizer.batches}
    for response in responses:
        assert response.timings is not None and response.timings.stages is not None
        stages = response.timings.stages
        assert set(stages) == {"fetch", "decode", "detect"}
        assert stages["decode"] in shares
        assert stages["detect"] == pytest.approx(2 * stages["decode"])
        assert stages["fetch"] >= 0
