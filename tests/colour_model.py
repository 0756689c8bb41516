"""A fake model that recognizes colours, fake workers running it, and a service with them: enough to exercise
the whole enrollment and recognition path without the face model."""

from __future__ import annotations

import asyncio
import io
import math
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI
from PIL import Image, UnidentifiedImageError

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
        self.last_stages: dict[str, float] = {}
        """Seconds of the latest `recognize()` call's `decode` and `match`, as the Recognizer reports them."""

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
        seconds = {"decode": 0.0, "match": 0.0}
        for image in images:
            started = time.perf_counter()
            colour = self._colour(image)
            decoded = time.perf_counter()
            seconds["decode"] += decoded - started
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
            seconds["match"] += time.perf_counter() - decoded
        self.last_stages = seconds
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
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost", timeout=30) as client:
            yield client


def photo(colour: tuple[int, int, int]) -> bytes:
    return jpeg_bytes(colour, size=(32, 32))


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, "condition not met in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


GATE_ENV = "COLOUR_MODEL_GATE_DIR"
GATED = (250, 130, 0)
"""Enrolling a photo of this colour waits at the gate (see GatedColourModel)."""


def _near(colour: tuple[int, int, int] | ImageRejected, wanted: tuple[int, int, int]) -> bool:
    """JPEG shifts a colour by a few levels."""
    return not isinstance(colour, ImageRejected) and all(abs(a - b) <= 8 for a, b in zip(colour, wanted, strict=True))


class GatedColourModel(ColourModel):
    """Holds the enrollment of a GATED photo: creates `<gate>/entered`, then waits for `<gate>/open`, so a test
    can act (delete the person) while the photo is being embedded, without guessing how long that takes."""

    def __init__(self, gate: Path) -> None:
        super().__init__()
        self.gate = gate

    def enroll(self, images: Sequence[ImageInput]) -> list[EnrollOutcome]:
        if any(_near(self._colour(image), GATED) for image in images):
            (self.gate / "entered").touch()
            deadline = time.monotonic() + 30
            while not (self.gate / "open").exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        return super().enroll(images)


def colour_recognizer(settings: Settings) -> ColourModel:
    """For `--recognizer-factory tests.colour_model:colour_recognizer` (worker and enroll processes); with
    $COLOUR_MODEL_GATE_DIR, the gated model."""
    gate = os.environ.get(GATE_ENV)
    return GatedColourModel(Path(gate)) if gate else ColourModel()
