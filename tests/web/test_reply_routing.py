"""#15's reply data path: answers addressed to the web process that waits for them (`reply_to`), workers that
answer nowhere else than a response queue of their deployment, and dead letters routed to their owner.

Cheap: in-memory or local (SQLite) queues, a fake recognizer, several "web processes" in one event loop (each a
PendingRequests, ResponsePoller and RecognitionGateway of its own, as `create_app`'s lifespan builds them)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from facerec import keys
from facerec.adapters.memory import MemoryQueue
from facerec.backend import open_local_data_tier
from facerec.messages import MAX_MESSAGE_BYTES, ErrorCode, RecognitionRequest
from facerec.ports import DataTier, MessageQueue, QueueNotFound, QueueStats
from facerec.settings import Settings
from facerec.testing import memory_data_tier
from facerec.web.errors import ServiceError
from facerec.web.gateway import RecognitionGateway
from facerec.web.pending import PendingRequests
from facerec.web.response_poller import ResponsePoller
from facerec.web.uploads import Upload
from facerec.worker.loop import Worker
from tests.worker.fakes import FakeRecognizer, collect, make_settings, photo_of, running, submit

PEOPLE = ("Paul", "Ana", "Bo")


def new_web_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class WebProcess:
    """What one web process holds for the reply path."""

    pending: PendingRequests
    poller: ResponsePoller
    gateway: RecognitionGateway
    reply_queue: str | None
    """Its own reply queue; None: it reads the fixed response queue."""


@asynccontextmanager
async def web_process(
    data: DataTier, settings: Settings, own: bool, dead_letters: MessageQueue | None = None
) -> AsyncIterator[WebProcess]:
    """`own`: reads a reply queue of its own (created here, deleted at the end) instead of the fixed one.
    `dead_letters`: the queue its dead-letter watcher reads (default: the deployment's)."""
    assert data.replies is not None
    name = settings.reply_queue(new_web_id()) if own else None
    responses = await data.replies.create(name) if name is not None else data.responses
    pending = PendingRequests()
    poller = ResponsePoller(
        responses,
        data.dead_letters if dead_letters is None else dead_letters,
        pending,
        pollers=2,
        wait_s=0.2,
        own_reply_queue=name,
        replies=data.replies,
        fixed_responses=data.responses,
    )
    poller.start()
    try:
        yield WebProcess(pending, poller, RecognitionGateway(data, pending, settings, reply_to=name), name)
    finally:
        await poller.stop()
        if name is not None:
            await data.replies.delete(name)


@asynccontextmanager
async def deployment(backend: str, settings: Settings) -> AsyncIterator[Callable[[], DataTier]]:
    """`view()`: the data tier as another process of the deployment opens it (its own SQLite connection on
    local; the same in-memory queues on memory)."""
    async with AsyncExitStack() as stack:
        if backend == "memory":
            data = await stack.enter_async_context(memory_data_tier(settings))
            yield lambda: data
            return
        views: list[DataTier] = []
        for _ in range(3):  # two web processes and a worker
            views.append(await stack.enter_async_context(open_local_data_tier(settings)))
        yield iter(views).__next__


def upload(name: str) -> Upload:
    return Upload(f"{name}.jpg", photo_of(name), "image/jpeg")


async def wait_for(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("backend", ["memory", "local"])
async def test_two_web_processes_each_get_their_own_answers(backend: str, tmp_path: Path) -> None:
    """The issue's repro turned around: two processes on one request queue, one worker; one reads the fixed
    response queue, the other its own reply queue. Before #15 half the answers went to the wrong process."""
    settings = make_settings(data_dir=tmp_path, request_deadline_s=30.0)
    async with deployment(backend, settings) as view:
        first_data, second_data, worker_data = view(), view(), view()
        async with (
            web_process(first_data, settings, own=False) as fixed,
            web_process(second_data, settings, own=True) as own,
            running(Worker(worker_data, FakeRecognizer(), settings, name="w-routing")),
        ):
            jobs = [
                (process, PEOPLE[i % 3], process.gateway.recognize(upload(PEOPLE[i % 3])))
                for i in range(20)
                for process in (fixed, own)
            ]
            answers = await asyncio.gather(*(job for _, _, job in jobs))
        for (_, person, _), answer in zip(jobs, answers, strict=True):
            assert answer.response.result is not None and answer.response.result.name == person
        for process in (fixed, own):
            assert (process.poller.resolved, process.poller.dropped) == (20, 0)
        assert (await worker_data.responses.stats()).visible == 0


async def test_requests_of_the_process_on_the_fixed_queue_carry_no_reply_to(tmp_path: Path) -> None:
    """One web process: its request messages are exactly what they were before reply queues existed."""
    settings = make_settings(data_dir=tmp_path)
    async with memory_data_tier(settings) as data, web_process(data, settings, own=False) as fixed:
        task = asyncio.create_task(fixed.gateway.recognize(upload("Paul")))
        [message] = await _received(data.requests)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert "reply_to" not in json.loads(message)


async def _received(queue: MessageQueue) -> list[str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        messages = await queue.receive(10, wait_seconds=0.1)
        if messages:
            return [m.body for m in messages]
    raise AssertionError("no message arrived")


@pytest.mark.parametrize(
    "reply_to",
    [
        "other-resp-0123456789ab",  # another deployment's reply queue
        "facerec-req-queue",  # the request queue itself: answering there would loop
        "facerec-req-dlq",
        "facerec-resp-0123456789AB",  # not a web id
    ],
)
async def test_worker_answers_a_foreign_reply_to_on_the_fixed_queue(
    reply_to: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings()
    assert settings.prefix == "facerec"
    async with memory_data_tier(settings) as data:
        assert data.replies is not None
        request = await submit(data, "a.jpg", photo_of("Ana"), reply_to=reply_to)
        with caplog.at_level(logging.WARNING, logger="facerec.worker.loop"):
            async with running(Worker(data, FakeRecognizer(), settings)):
                [response] = await collect(data, [request.id])
        assert response.result is not None and response.result.name == "Ana"
        assert await data.replies.list() == []
    refused = [r for r in caplog.records if r.getMessage() == "reply_to_refused"]
    assert [getattr(r, "reply_to", None) for r in refused] == [reply_to]


async def test_an_answer_whose_reply_queue_is_gone_is_acknowledged(caplog: pytest.LogCaptureFixture) -> None:
    """The process that waited stopped (or was reaped): its requests are acknowledged, not redelivered forever,
    whether the worker had the queue's handle already or not."""
    settings = make_settings(max_receives=3)
    async with memory_data_tier(settings) as data:
        assert data.replies is not None
        name = settings.reply_queue(new_web_id())
        queue = await data.replies.create(name)
        worker = Worker(data, FakeRecognizer(), settings)
        with caplog.at_level(logging.WARNING, logger="facerec.worker.loop"):
            async with running(worker):
                answered = await submit(data, "a.jpg", photo_of("Ana"), reply_to=name)
                [message] = await _received(queue)  # answered there: the worker holds the queue's handle now
                assert json.loads(message)["id"] == answered.id
                await data.replies.delete(name)
                for person in ("Paul", "Bo"):
                    await submit(data, f"{person}.jpg", photo_of(person), reply_to=name)
                await wait_for(lambda: worker.stats.unanswered == 2)
            never = settings.reply_queue(new_web_id())  # a queue the worker never opened
            async with running(worker):
                await submit(data, "c.jpg", photo_of("Paul"), reply_to=never)
                await wait_for(lambda: worker.stats.unanswered == 3)
        stats = await data.requests.stats()
        assert (stats.visible, stats.in_flight) == (0, 0)
        assert (await data.dead_letters.stats()).visible == 0
        assert (await data.responses.stats()).visible == 0  # not answered on the fixed queue either
    gone = [getattr(r, "reply_to", None) for r in caplog.records if r.getMessage() == "reply_queue_gone"]
    assert gone == [name, never]  # once per queue


@pytest.mark.parametrize("owner_reads_own_queue", [True, False])
async def test_a_dead_letter_received_by_another_process_reaches_its_owner_as_502(
    owner_reads_own_queue: bool, tmp_path: Path
) -> None:
    """The DLQ is shared: here the other process's watcher gets the owner's dead letter (the owner watches an
    empty one) and answers it on the owner's reply queue, and the owner's client gets the usual 502."""
    settings = make_settings(data_dir=tmp_path, request_deadline_s=30.0)
    async with (
        memory_data_tier(settings) as data,
        web_process(data, settings, own=owner_reads_own_queue, dead_letters=MemoryQueue("nothing")) as owner,
        web_process(data, settings, own=not owner_reads_own_queue) as other,
    ):
        waiting = asyncio.create_task(owner.gateway.recognize(upload("Bo")))
        # No worker: the request "failed repeatedly" and the queue moved it to the dead-letter queue.
        [body] = await _received(data.requests)
        assert json.loads(body).get("reply_to") == owner.reply_queue
        await data.dead_letters.send(body)
        with pytest.raises(ServiceError) as failure:
            await asyncio.wait_for(waiting, timeout=10)
        assert (failure.value.status, failure.value.code) == (502, ErrorCode.DEAD_LETTERED)
        assert other.poller.dead_letters_routed == 1 and other.poller.dead_lettered == 0
        await wait_for(lambda: owner.poller.resolved == 1)
        assert (await data.dead_letters.stats()).visible == 0
        assert (await data.dead_letters.stats()).in_flight == 0


async def test_a_dead_letter_whose_reply_queue_is_gone_is_deleted(tmp_path: Path) -> None:
    settings = make_settings(data_dir=tmp_path)
    async with memory_data_tier(settings) as data, web_process(data, settings, own=False) as fixed:
        request_id = keys.new_request_id()
        gone = settings.reply_queue(new_web_id())
        body = RecognitionRequest(
            id=request_id, input_key="i", output_key="o", enqueued_at=time.time(), reply_to=gone
        ).to_json()
        await data.dead_letters.send(body)
        deadline = time.monotonic() + 10
        while await data.dead_letters.stats() != QueueStats(visible=0, in_flight=0):
            assert time.monotonic() < deadline, "the dead letter was not deleted"
            await asyncio.sleep(0.01)
        assert (fixed.poller.dead_letters_routed, fixed.poller.dead_lettered) == (0, 0)


def test_the_longest_request_with_the_longest_reply_to_fits_the_request_queue() -> None:
    for text in ("\x01" * 500, "é" * 500, '"' * 500, "a" * 500):
        request_id = keys.new_request_id()
        request = RecognitionRequest(
            id=request_id,
            input_key=keys.input_key(text, request_id),
            input_key2=keys.input_key(text, request_id, part=2),
            output_key=keys.output_key(text, request_id),
            filename=text,
            enqueued_at=time.time(),
            deadline=time.time() + 60.123456789,
            kind="verify",
            person=text,
            top_k=10,
            all_faces=True,
            generation="0" * 20,
            reply_to="r" * 80,
        )
        assert len(request.to_json().encode()) <= MAX_MESSAGE_BYTES


@pytest.mark.parametrize("reply_to", ["", "r" * 81, "a b", "a/b", "é"])
def test_reply_to_outside_the_queue_name_alphabet_is_invalid(reply_to: str) -> None:
    with pytest.raises(ValueError):
        RecognitionRequest(id="0" * 32, input_key="i", output_key="o", enqueued_at=0.0, reply_to=reply_to)


@pytest.mark.parametrize("backend", ["memory", "local"])
async def test_a_receive_waiting_on_a_reply_queue_raises_when_another_process_deletes_it(
    backend: str, tmp_path: Path
) -> None:
    """A web process whose queue is reaped under it (it was taken for dead) learns it at once, not after a
    20 s long poll of a queue that no longer exists."""
    settings = make_settings(data_dir=tmp_path)
    async with deployment(backend, settings) as view:
        owner, reaper = view().replies, view().replies
        assert owner is not None and reaper is not None
        name = settings.reply_queue(new_web_id())
        queue = await owner.create(name)
        waiting = asyncio.create_task(queue.receive(10, wait_seconds=20))
        await asyncio.sleep(0.1)  # the receive is waiting
        assert not waiting.done()
        await reaper.delete(name)
        with pytest.raises(QueueNotFound):
            await asyncio.wait_for(waiting, timeout=10)
