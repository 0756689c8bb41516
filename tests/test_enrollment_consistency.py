"""The web tier and the workers agree on each enrolled photo's fate: what a client is told was rejected (worker
error, 502, 504) leaves nothing in the gallery store, and a delete stays a delete even when an enrollment of
that person was in flight. Real Worker, a colour model, the in-process data tier (one test on the local one)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from facerec import people
from facerec.adapters.memory import MemoryBlobStore
from facerec.backend import open_data_tier
from facerec.ports import DataTier, MessageQueue
from facerec.recognition.results import EnrollOutcome, ImageInput, ImageRejected, Outcome
from facerec.settings import Settings
from facerec.testing import memory_data_tier
from facerec.web.app import create_app
from facerec.worker.gallery_sync import GallerySync
from tests.colour_model import ADA, BOB, ColourModel, WorkerCompanion, photo
from tests.web.harness import never_answer, running_web

ADA_NAME = "Ada Lovelace"


class GatedModel(ColourModel):
    """Enrollment waits at a gate (set by the test) after announcing that it started."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()

    def enroll(self, images: Sequence[ImageInput]) -> list[EnrollOutcome]:
        self.entered.set()
        assert self.gate.wait(20), "the test never opened the gate"
        return super().enroll(images)


class DelayedResponses:
    """The response queue, holding every send until `gate` is set: answers that arrive after the deadline."""

    def __init__(self, inner: MessageQueue) -> None:
        self._inner = inner
        self.gate = asyncio.Event()
        self.held = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def send_batch(self, bodies: Sequence[str]) -> list[str]:
        self.held += 1
        await self.gate.wait()
        return await self._inner.send_batch(bodies)


@dataclass
class Stack:
    client: httpx.AsyncClient
    data: DataTier
    worker: WorkerCompanion


@asynccontextmanager
async def stack(
    model: ColourModel,
    data_tier: Callable[[Settings], AbstractAsyncContextManager[DataTier]] = memory_data_tier,
    **overrides: Any,
) -> AsyncIterator[Stack]:
    base: dict[str, Any] = {
        "gallery_refresh_s": 0.1,
        "web_poll_wait_s": 0.1,
        "worker_poll_wait_s": 0.1,
        "request_deadline_s": 10,
        "batch_max": 4,
    }
    settings = Settings(**{**base, **overrides})
    started: list[WorkerCompanion] = []

    def companion(app: FastAPI, data: DataTier) -> WorkerCompanion:
        started.append(WorkerCompanion(data, model, settings, "worker-0"))
        return started[0]

    app = create_app(settings, data_tier, companions=[companion])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost", timeout=30) as client:
            yield Stack(client, app.state.data, started[0])


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def person_objects(store: Any, name: str) -> list[str]:
    """Every photo and record of the person (the generation markers of a delete are not the person's data)."""
    return [key for prefix in people.person_prefixes(name) for key in await store.list(prefix)]


def enroll_files(*colours: tuple[int, int, int]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("photos", (f"p{i}.jpg", photo(colour), "image/jpeg")) for i, colour in enumerate(colours)]


async def test_enrollment_answered_after_its_deadline_leaves_no_record_and_no_photo() -> None:
    """The worker receives the photo in time, but embeds it after the deadline: 504 for the client, and the
    worker must not write the record the client was told was rejected."""
    model = GatedModel()
    async with stack(model, request_deadline_s=1.0) as s:
        assert s.data.gallery is not None
        response = await s.client.post(f"/v1/people/{ADA_NAME}/photos", files=enroll_files(ADA))
        assert response.status_code == 200, response.text
        assert response.json()["used"] == []
        assert "no answer within" in response.json()["rejected"][0]["reason"]
        assert model.entered.is_set()  # a worker had received it
        model.gate.set()
        stats = s.worker.worker.stats
        await until(lambda: stats.errors + stats.processed >= 1)  # the late answer, nobody waits for it
        assert stats.errors == 1
        assert await person_objects(s.data.gallery, ADA_NAME) == []
        assert (await s.client.get("/v1/people")).json() == {"people": []}


@pytest.mark.parametrize("backend", ["memory", "local"])
async def test_record_written_in_time_but_answered_late_is_deleted_with_its_photo(backend: str, tmp_path: Path) -> None:
    """The worker writes the record before the deadline, but its answer reaches the web tier after it (a slow
    response queue): the web tier reports 504 and deletes photo and record."""
    holder: list[DelayedResponses] = []

    @asynccontextmanager
    async def tier(settings: Settings) -> AsyncIterator[DataTier]:
        opened = open_data_tier(settings) if backend == "local" else memory_data_tier(settings)
        async with opened as data:
            holder.append(DelayedResponses(data.responses))
            yield DataTier(
                inputs=data.inputs,
                outputs=data.outputs,
                requests=data.requests,
                responses=holder[0],
                dead_letters=data.dead_letters,
                gallery=data.gallery,
            )

    model = ColourModel()
    async with stack(model, tier, request_deadline_s=1.0, backend="local", data_dir=tmp_path) as s:
        assert s.data.gallery is not None
        response = await s.client.post(f"/v1/people/{ADA_NAME}/photos", files=enroll_files(ADA))
        assert response.json()["used"] == [] and len(response.json()["rejected"]) == 1
        assert holder[0].held == 1
        holder[0].gate.set()
        await until(lambda: s.worker.worker.stats.processed >= 1)
        assert await person_objects(s.data.gallery, ADA_NAME) == []
        await until(lambda: ADA_NAME not in model.people)
        reply = await s.client.post("/", files={"inputFile": ("q.jpg", photo(ADA), "image/jpeg")})
        assert reply.text == "q:Unknown"


async def test_dead_lettered_enrollment_leaves_no_orphan_photo() -> None:
    async with running_web(answer=never_answer, visibility_timeout_s=0.05, max_receives=2) as web:
        assert web.data.gallery is not None
        response = await web.client.post(f"/v1/people/{ADA_NAME}/photos", files=enroll_files(ADA))
        assert response.status_code == 200, response.text
        assert response.json()["rejected"][0]["reason"] == "processing failed repeatedly"
        assert await person_objects(web.data.gallery, ADA_NAME) == []


async def test_delete_during_enrollment_stays_a_delete() -> None:
    """DELETE while a photo of the person is being embedded; the worker's later write must not bring them back."""
    model = GatedModel()
    async with stack(model) as s:
        assert s.data.gallery is not None
        model.gate.set()
        first = await s.client.post(f"/v1/people/{ADA_NAME}/photos", files=enroll_files(ADA))
        assert first.json()["used"] == ["p0.jpg"]
        await until(lambda: ADA_NAME in model.people)
        model.gate.clear()
        model.entered.clear()
        enrolling = asyncio.create_task(
            s.client.post(f"/v1/people/{ADA_NAME}/photos", files=enroll_files((205, 45, 45)))
        )
        await until(model.entered.is_set)
        assert (await s.client.delete(f"/v1/people/{ADA_NAME}")).status_code == 204
        model.gate.set()
        answer = (await enrolling).json()
        assert answer["used"] == []
        assert answer["rejected"][0]["reason"] == "the person was deleted while the photo was being enrolled"
        assert await person_objects(s.data.gallery, ADA_NAME) == []
        assert (await s.client.get("/v1/people")).json() == {"people": []}
        await until(lambda: ADA_NAME not in model.people)
        reply = await s.client.post("/", files={"inputFile": ("q.jpg", photo(ADA), "image/jpeg")})
        assert reply.text == "q:Unknown"
        # The person can be enrolled again afterwards.
        again = await s.client.post(f"/v1/people/{ADA_NAME}/photos", files=enroll_files(ADA))
        assert again.json()["used"] == ["p0.jpg"]
        assert [p["name"] for p in (await s.client.get("/v1/people")).json()["people"]] == [ADA_NAME]


async def test_a_late_write_after_the_web_tier_discarded_the_photo_is_not_kept() -> None:
    """The race the deadline check cannot close: the web tier discards (photo, then record) just before the
    worker writes. The worker's verification after its write removes the record."""
    store = MemoryBlobStore("gallery")
    photo_id = "b" * 32
    photo_key = people.photo_key(ADA_NAME, photo_id, ".jpg")
    record_key = people.embedding_key(ADA_NAME, photo_id)
    record = people.EmbeddingRecord.from_vector(
        [1.0], person=ADA_NAME, photo_id=photo_id, weights="w", crop_size=1, margin=0, normalisation="n"
    )
    await store.put(photo_key, b"jpeg")
    await people.discard_enrollment(store, photo_key, record_key)
    assert await people.commit_enrollment(store, photo_key, record_key, record, time.time() + 60) == (
        people.PHOTO_DELETED
    )
    assert await store.list() == []
    await store.put(photo_key, b"jpeg")
    assert await people.commit_enrollment(store, photo_key, record_key, record, time.time() - 1) == (
        people.DEADLINE_EXCEEDED
    )
    assert await store.list() == [photo_key]


async def test_gallery_sync_ignores_records_of_a_superseded_generation() -> None:
    """Even a record that slips into the store after a delete cannot make the deleted person recognizable."""
    store = MemoryBlobStore("gallery")
    model = ColourModel()
    sync = GallerySync(store, model, 60)
    fields = model.embedding_fields()
    old = people.EmbeddingRecord.from_vector([0.8, 0.1, 0.1], person=ADA_NAME, photo_id="c" * 32, **fields)
    await people.save_enrollment(store, ADA_NAME, "c" * 32, b"jpeg", ".jpg", old)
    await sync.refresh()
    assert set(model.people) == {ADA_NAME}
    assert await people.forget_person(store, ADA_NAME) == 2
    # A write that slipped through: the record of the generation the delete superseded.
    await store.put(people.embedding_key(ADA_NAME, "c" * 32), old.model_dump_json().encode())
    await sync.refresh()
    assert model.people == {}
    # A record of the current generation is used.
    current = await people.current_generation(store, ADA_NAME)
    assert current is not None
    new = old.model_copy(update={"photo_id": "d" * 32, "generation": current})
    await people.save_enrollment(store, ADA_NAME, "d" * 32, b"jpeg", ".jpg", new)
    await sync.refresh()
    assert set(model.people) == {ADA_NAME} and len(model.people[ADA_NAME]) == 1


class HistoryModel(ColourModel):
    """Remembers every gallery it was given (with when), and names each batch from one snapshot."""

    def __init__(self, colours: dict[str, tuple[int, int, int]]) -> None:
        super().__init__()
        self.colours = colours
        self.history: list[tuple[float, frozenset[str]]] = [(0.0, frozenset())]
        self.embedding: set[str] = set()
        """Whose photos are being embedded right now."""
        self._lock = threading.Lock()

    def _whose(self, image: ImageInput) -> str:
        colour = self._colour(image)
        assert not isinstance(colour, ImageRejected)
        return min(
            self.colours, key=lambda name: sum(abs(a - b) for a, b in zip(self.colours[name], colour, strict=True))
        )

    def enroll(self, images: Sequence[ImageInput]) -> list[EnrollOutcome]:
        names = {self._whose(image) for image in images}
        with self._lock:
            self.embedding |= names
        time.sleep(0.05)  # the window in which the test deletes them
        try:
            return super().enroll(images)
        finally:
            with self._lock:
                self.embedding -= names

    def use_enrolled(self, people: dict[str, list[list[float]]]) -> None:
        with self._lock:
            self.people = dict(people)
            self.history.append((time.monotonic(), frozenset(people)))

    def recognize(self, images: Sequence[ImageInput]) -> list[Outcome]:
        snapshot = self.people  # GallerySync replaces it from the event loop thread: read it once
        shown = ColourModel()
        shown.people = snapshot
        time.sleep(0.005)
        return shown.recognize(images)

    def possible_names(self, started: float, ended: float) -> set[str]:
        """Names of every gallery current at some moment in [started, ended]."""
        with self._lock:
            history = list(self.history)
        names: set[str] = set()
        for index, (since, snapshot) in enumerate(history):
            until_ = history[index + 1][0] if index + 1 < len(history) else float("inf")
            if since <= ended and until_ >= started:
                names |= snapshot
        return names


async def test_recognitions_during_enrolls_and_deletes_only_name_people_of_a_gallery_they_could_see() -> None:
    colours = {"Ada": ADA, "Bob": BOB, "Cy": (40, 200, 40)}
    model = HistoryModel(colours)
    async with stack(model, gallery_refresh_s=0.05, batch_max=8) as s:
        assert s.data.gallery is not None
        gallery = s.data.gallery
        answers: list[tuple[float, float, str]] = []

        async def recognize(i: int) -> None:
            colour = list(colours.values())[i % len(colours)]
            started = time.monotonic()
            reply = await s.client.post("/", files={"inputFile": (f"q{i}.jpg", photo(colour), "image/jpeg")})
            assert reply.status_code == 200, reply.text
            answers.append((started, time.monotonic(), reply.text.split(":", 1)[1]))

        async def until_embedding(name: str) -> None:
            deadline = time.monotonic() + 10
            while name not in model.embedding:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.002)

        async def stream(first: int) -> None:
            for i in range(first, 200, 10):
                await recognize(i)

        recognitions_done = asyncio.Event()

        async def recognitions() -> None:
            await asyncio.gather(*(stream(first) for first in range(10)))
            recognitions_done.set()

        async def churn(name: str) -> None:
            colour = colours[name]
            round_ = 0
            while round_ < 4 or not recognitions_done.is_set():
                round_ += 1
                enrolling = asyncio.create_task(
                    s.client.post(f"/v1/people/{name}/photos", files=enroll_files(colour, colour))
                )
                if round_ % 2:
                    # While the enrollment is in flight: its photos are stored, the worker is embedding them.
                    await until_embedding(name)
                    await s.client.delete(f"/v1/people/{name}")
                await enrolling
                # No record without its photo, no photo without its record, once nothing is in flight.
                keys = await person_objects(gallery, name)
                photo_ids = {k.rsplit("/", 1)[1].split(".")[0] for k in keys if k.startswith(people.PHOTOS)}
                record_ids = {k.rsplit("/", 1)[1].split(".")[0] for k in keys if k.startswith(people.EMBEDDINGS)}
                assert photo_ids == record_ids, keys
                await asyncio.sleep(0.1)  # enrolled (or not) for a while: recognitions see this state
                await s.client.delete(f"/v1/people/{name}")
                assert await person_objects(gallery, name) == []

        started = time.monotonic()
        tasks = [recognitions()] + [churn(name) for name in colours]
        await asyncio.gather(*tasks)
        assert len(answers) == 200
        assert time.monotonic() - started < 50
        for began, ended, name in answers:
            assert name == "Unknown" or name in model.possible_names(began, ended), (name, began, ended)
        assert any(name != "Unknown" for _, _, name in answers), "no recognition saw an enrolled person"
        # Everyone was deleted last: nobody is listed or recognized any more.
        assert (await s.client.get("/v1/people")).json() == {"people": []}
        await until(lambda: model.people == {})
