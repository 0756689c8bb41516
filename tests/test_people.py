"""Gallery management through the API: enroll, list and forget people; every worker sees each change within
seconds without a restart (two workers, in-process data tier, a fake model that recognizes colours)."""

from __future__ import annotations

import asyncio
import io
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image, UnidentifiedImageError

from facerec import people
from facerec.ports import DataTier
from facerec.recognition.results import (
    NOT_ONE_FACE,
    UNKNOWN,
    Enrollment,
    EnrollOutcome,
    FaceResult,
    ImageInput,
    ImageRejected,
    Outcome,
)
from facerec.settings import Settings
from facerec.testing import jpeg_bytes, memory_data_tier
from facerec.web.app import create_app
from facerec.worker.loop import Worker
from facerec.worker.threads import run_in_daemon_thread

ADA, BOB, NOBODY = (200, 40, 40), (40, 40, 200), (0, 0, 0)


class ColourModel:
    """A photo's 'face' is its colour; black has no face, white has two. Enough to exercise the whole path."""

    def __init__(self) -> None:
        self.people: dict[str, list[list[float]]] = {}

    @staticmethod
    def _colour(image: ImageInput) -> tuple[int, int, int] | ImageRejected:
        try:
            picture = Image.open(io.BytesIO(image)) if isinstance(image, bytes) else image
            return picture.convert("RGB").getpixel((5, 5))  # type: ignore[return-value]
        except (UnidentifiedImageError, OSError):
            return ImageRejected("not_an_image", "cannot decode image")

    def enroll(self, images: Sequence[ImageInput]) -> list[EnrollOutcome]:
        outcomes: list[EnrollOutcome] = []
        for image in images:
            colour = self._colour(image)
            if isinstance(colour, ImageRejected):
                outcomes.append(colour)
            elif max(colour) < 20:
                outcomes.append(ImageRejected(NOT_ONE_FACE, "no face found in the photo"))
            elif min(colour) > 235:
                outcomes.append(ImageRejected(NOT_ONE_FACE, "2 faces found; enroll needs exactly one"))
            else:
                outcomes.append(Enrollment([c / 255 for c in colour], (1.0, 1.0, 9.0, 9.0), 0.99))
        return outcomes

    def embedding_fields(self) -> dict[str, object]:
        return {"weights": "colour", "crop_size": 160, "margin": 14, "normalisation": "fixed"}

    def use_enrolled(self, people: dict[str, list[list[float]]]) -> None:
        self.people = dict(people)

    def recognize(self, images: Sequence[ImageInput]) -> list[Outcome]:
        results: list[Outcome] = []
        for image in images:
            colour = self._colour(image)
            if isinstance(colour, ImageRejected):
                results.append(colour)
                continue
            vector = [c / 255 for c in colour]
            best = min(
                ((name, math.dist(vector, v)) for name, vs in self.people.items() for v in vs),
                key=lambda pair: pair[1],
                default=(UNKNOWN, None),
            )
            results.append(FaceResult(best[0], best[1], (1.0, 1.0, 9.0, 9.0), 0.99, unknown=best[0] == UNKNOWN))
        return results


class WorkerCompanion:
    def __init__(self, data: DataTier, model: ColourModel, settings: Settings, name: str) -> None:
        self.worker = Worker(data, model, settings, name=name, infer=run_in_daemon_thread)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WorkerCompanion:
        self.task = asyncio.create_task(self.worker.run(self.stop))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop.set()
        assert self.task is not None
        await self.task


@asynccontextmanager
async def service(models: list[ColourModel]) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        gallery_refresh_s=0.2, web_poll_wait_s=0.2, worker_poll_wait_s=0.2, request_deadline_s=10, batch_max=4
    )

    def companion(model: ColourModel, index: int) -> Callable[[FastAPI, DataTier], WorkerCompanion]:
        def start(app: FastAPI, data: DataTier) -> WorkerCompanion:
            return WorkerCompanion(data, model, settings, f"worker-{index}")

        return start

    app = create_app(settings, memory_data_tier, companions=[companion(m, i) for i, m in enumerate(models)])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://web", timeout=30) as client:
            yield client


def photo(colour: tuple[int, int, int]) -> bytes:
    return jpeg_bytes(colour, size=(32, 32))


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, "condition not met in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_enroll_list_recognize_and_forget_across_two_workers() -> None:
    models = [ColourModel(), ColourModel()]
    async with service(models) as client:
        assert (await client.get("/v1/people")).json() == {"people": []}
        files = [
            ("photos", ("ada1.jpg", photo(ADA), "image/jpeg")),
            ("photos", ("ada2.jpg", photo((205, 45, 45)), "image/jpeg")),
            ("photos", ("empty-room.jpg", photo(NOBODY), "image/jpeg")),
            ("photos", ("group.jpg", photo((250, 250, 250)), "image/jpeg")),
            ("photos", ("notes.txt", b"not an image at all", "text/plain")),
        ]
        response = await client.post("/v1/people/Ada Lovelace/photos", files=files)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["person"] == "Ada Lovelace"
        assert sorted(body["used"]) == ["ada1.jpg", "ada2.jpg"]
        reasons = {r["filename"]: r["reason"] for r in body["rejected"]}
        assert set(reasons) == {"empty-room.jpg", "group.jpg", "notes.txt"}
        assert "no face" in reasons["empty-room.jpg"] and "2 faces" in reasons["group.jpg"]
        assert "not a JPEG" in reasons["notes.txt"]

        listed = (await client.get("/v1/people")).json()
        assert listed == {
            "people": [{"name": "Ada Lovelace", "photos": 2, "embeddings": 2, "source": "enrolled", "read_only": False}]
        }
        # Every worker knows her within a few seconds, without a restart.
        seen_after = await until(lambda: all("Ada Lovelace" in m.people for m in models))
        assert seen_after < 3.0
        answers = await asyncio.gather(
            *(client.post("/", files={"inputFile": (f"q{i}.jpg", photo(ADA), "image/jpeg")}) for i in range(8))
        )
        assert {a.text for a in answers} == {f"q{i}:Ada Lovelace" for i in range(8)}

        assert (await client.delete("/v1/people/Ada Lovelace")).status_code == 204
        await until(lambda: all("Ada Lovelace" not in m.people for m in models))
        assert (await client.get("/v1/people")).json() == {"people": []}
        assert (await client.post("/", files={"inputFile": ("q.jpg", photo(ADA), "image/jpeg")})).text == "q:Unknown"
        missing = await client.delete("/v1/people/Ada Lovelace")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


# Names as they appear in the URL path (percent-encoded): blank, a slash, a tab, too long, too long once encoded.
@pytest.mark.parametrize("name", ["%20%20", "a%2Fb", "tab%09here", "x" * 65, "%C3%A9" * 30])
async def test_invalid_names_are_422(name: str) -> None:
    async with service([ColourModel()]) as client:
        files = [("photos", ("a.jpg", photo(ADA), "image/jpeg"))]
        response = await client.post(f"/v1/people/{name}/photos", files=files)
        if response.status_code == 404:  # a slash splits the path: no such route, still a clear 4xx
            return
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_name"


async def test_enroll_without_photos_is_422_naming_the_field() -> None:
    async with service([ColourModel()]) as client:
        response = await client.post("/v1/people/Bob/photos", files={"inputFile": ("a.jpg", photo(BOB), "image/jpeg")})
    assert response.status_code == 422
    assert "'photos'" in response.json()["error"]["message"]


def test_person_keys_round_trip_and_records_encode_vectors() -> None:
    for name in ["Ada Lovelace", "Zoë O'Neil", "李小龍", "50% off"]:
        key = people.embedding_key(name, "0" * 32)
        assert people.parse_embedding_key(key) == (people.normalise_name(name), "0" * 32)
        assert ".." not in key and key.count("/") == 2
    record = people.EmbeddingRecord.from_vector(
        [0.5, -0.25, 1.0], person="Ada", photo_id="f" * 32, weights="w", crop_size=160, margin=14, normalisation="n"
    )
    assert record.vector() == [0.5, -0.25, 1.0]
    assert people.parse_embedding_key("embeddings/Ada/not-an-id.json") is None
    assert people.parse_embedding_key("photos/Ada/" + "0" * 32 + ".jpg") is None
