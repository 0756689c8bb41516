"""A fake BatchRecognizer and helpers to build requests: the worker's tests need no model."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from facerec import keys
from facerec.adapters.memory import MemoryBlobStore, MemoryQueue
from facerec.messages import MAX_RESPONSE_BYTES, RecognitionRequest, RecognitionResponse, parse_response
from facerec.ports import DataTier
from facerec.recognition.results import (
    NO_FACE,
    Candidate,
    FaceResult,
    ImageInput,
    ImageRejected,
    Outcome,
    Verification,
    VerifiedFace,
    VerifyInput,
    VerifyOutcome,
    Wanted,
)
from facerec.settings import Settings
from facerec.testing import jpeg_bytes
from facerec.worker.loop import Worker

# A solid colour stands for a person; black stands for a photo without a face.
PEOPLE = {"Paul": (200, 30, 30), "Ana": (30, 200, 30), "Bo": (30, 30, 200)}
NO_FACE_COLOR = (0, 0, 0)
POISON = b"POISON: crashes the recognizer"
HARD_POISON = b"HARD POISON: kills the worker process"


def photo_of(name: str) -> bytes:
    return jpeg_bytes(PEOPLE[name])


def faceless_photo() -> bytes:
    return jpeg_bytes(NO_FACE_COLOR)


class FakeRecognizer:
    """Names a photo by its colour; raises on POISON anywhere in the batch (as a crash would)."""

    def __init__(self, delay_s: float = 0.0, on_batch_start: Callable[[], None] | None = None) -> None:
        self.delay_s = delay_s
        self.on_batch_start = on_batch_start
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.started = threading.Event()
        """Set when the first batch arrives."""
        self.wanted: list[list[Wanted] | None] = []
        """What each recognize() call was asked for (None: called without `wanted`)."""
        self.verified: list[int] = []
        """The size of each verify() call."""

    def recognize(self, images: Sequence[ImageInput], wanted: Sequence[Wanted] | None = None) -> list[Outcome]:
        self.wanted.append(list(wanted) if wanted is not None else None)
        self.batches.append(len(images))
        self.threads.add(threading.current_thread().name)
        self.started.set()
        if self.on_batch_start is not None:
            self.on_batch_start()
        if any(image == HARD_POISON for image in images):
            os._exit(3)  # as a segfault or the OOM killer would: no cleanup, no answer
        if any(image == POISON for image in images):
            raise RuntimeError("poisoned batch")
        time.sleep(self.delay_s * len(images))
        outcomes = [self._one(image) for image in images]
        for index, wish in enumerate(wanted or []):
            outcome = outcomes[index]
            if isinstance(outcome, FaceResult) and not outcome.no_face:
                outcomes[index] = self._more(outcome, wish)
        return outcomes

    def _more(self, subject: FaceResult, wish: Wanted) -> FaceResult:
        """Candidates: every person by colour distance; every face: a small bystander (always `Bo`) too."""
        subject = replace(subject, candidates=_candidates(subject.name, wish.top_k))
        if not wish.all_faces:
            return subject
        bystander = FaceResult("Bo", 0.2, BYSTANDER_BOX, 0.9, candidates=_candidates("Bo", wish.top_k))
        return replace(subject, faces=(subject, bystander))

    def verify(self, requests: Sequence[VerifyInput]) -> list[VerifyOutcome]:
        """Same colour, or the colour of the person: the same person."""
        self.verified.append(len(requests))
        outcomes: list[VerifyOutcome] = []
        for request in requests:
            sides = [("image1", self._one(request.image1))]
            if request.image2 is not None:
                sides.append(("image2", self._one(request.image2)))
            rejected = next(
                (
                    ImageRejected(o.code, f"{label}: {o.message}")
                    if isinstance(o, ImageRejected)
                    else ImageRejected("no_face", f"no face found in {label}")
                    for label, o in sides
                    if isinstance(o, ImageRejected) or o.no_face
                ),
                None,
            )
            if rejected is not None:
                outcomes.append(rejected)
                continue
            if request.image2 is None and request.person not in PEOPLE:
                outcomes.append(ImageRejected("unknown_person", f"{request.person!r} is not enrolled"))
                continue
            other = sides[1][1].name if request.image2 is not None else request.person  # type: ignore[union-attr]
            same = sides[0][1].name == other  # type: ignore[union-attr]
            faces = tuple(VerifiedFace(label, (1.0, 2.0, 30.0, 40.0), 0.99) for label, _ in sides)
            outcomes.append(Verification(same, 0.3 if same else 1.4, FAKE_THRESHOLD, faces))
        return outcomes

    def _one(self, image: ImageInput) -> Outcome:
        if isinstance(image, bytes):
            try:
                image = Image.open(io.BytesIO(image))
                image.load()
            except (UnidentifiedImageError, OSError) as exc:
                return ImageRejected("not_an_image", f"cannot decode image: {exc}")
        pixel = image.convert("RGB").getpixel((10, 10))
        if max(pixel) < 20:
            return FaceResult(NO_FACE, None, None, None, no_face=True)
        name, distance = min(
            (
                (person, sum((a - b) ** 2 for a, b in zip(color, pixel, strict=True)) ** 0.5)
                for person, color in PEOPLE.items()
            ),
            key=lambda pair: pair[1],
        )
        return FaceResult(name, distance / 255, (1.0, 2.0, 30.0, 40.0), 0.99)


FAKE_THRESHOLD = 1.0
BYSTANDER_BOX = (40.0, 5.0, 50.0, 15.0)


def _candidates(name: str, top_k: int) -> tuple[Candidate, ...]:
    """Every person, the named one first (distance 0.2), the others further, as many as asked for."""
    order = [name, *sorted(person for person in PEOPLE if person != name)]
    return tuple(Candidate(person, 0.2 + index) for index, person in enumerate(order[:top_k]))


def process_recognizer(settings: Settings) -> FakeRecognizer:
    """For `facerec worker --recognizer-factory`: delay per image and a marker file from the environment."""
    marker = os.environ.get("FAKE_RECOGNIZER_BATCH_FILE")
    return FakeRecognizer(
        delay_s=float(os.environ.get("FAKE_RECOGNIZER_DELAY_S", "0")),
        on_batch_start=(lambda: Path(marker).touch()) if marker else None,
    )


def memory_tier(visibility_timeout: float = 30.0, max_receives: int = 3) -> DataTier:
    dlq = MemoryQueue("dlq")
    return DataTier(
        inputs=MemoryBlobStore("in"),
        outputs=MemoryBlobStore("out"),
        requests=MemoryQueue("req", visibility_timeout, max_receives=max_receives, dead_letter=dlq),
        responses=MemoryQueue("resp", max_message_bytes=MAX_RESPONSE_BYTES),
        dead_letters=dlq,
    )


async def submit(
    data: DataTier,
    filename: str,
    image: bytes | None,
    deadline: float | None = None,
    *,
    second: bytes | None = None,
    **fields: object,
) -> RecognitionRequest:
    """What the web tier does: store the input (unless None: a missing input) and send the request. `fields`:
    more request fields (`kind`, `top_k`, `all_faces`, `person`); `second`: a verification's second photo."""
    request_id = keys.new_request_id()
    request = RecognitionRequest.model_validate(
        {
            "id": request_id,
            "input_key": keys.input_key(filename, request_id),
            "output_key": keys.output_key(filename, request_id),
            "filename": filename,
            "enqueued_at": time.time(),
            "deadline": deadline,
            "input_key2": None if second is None else keys.input_key(filename, request_id, part=2),
            **fields,
        }
    )
    if image is not None:
        await data.inputs.put(request.input_key, image)
    if second is not None:
        assert request.input_key2 is not None
        await data.inputs.put(request.input_key2, second)
    await data.requests.send(request.to_json())
    return request


def make_settings(**overrides: object) -> Settings:
    defaults: dict[str, object] = {
        "backend": "local",
        "batch_max": 16,
        "batch_fill_wait_ms": 20,
        "worker_poll_wait_s": 0.05,
        "visibility_timeout_s": 30,
        "max_receives": 3,
    }
    return Settings(**{**defaults, **overrides})


async def collect(data: DataTier, expected: int | Collection[str], within_s: float = 10.0) -> list[RecognitionResponse]:
    """Read and acknowledge responses as the web tier does until `expected` (a number of distinct ids, or the
    ids themselves) arrived, or `within_s` passed."""

    def complete(responses: list[RecognitionResponse]) -> bool:
        seen = {r.id for r in responses}
        return len(seen) >= expected if isinstance(expected, int) else set(expected) <= seen

    responses: list[RecognitionResponse] = []
    deadline = time.monotonic() + within_s
    while not complete(responses) and time.monotonic() < deadline:
        messages = await data.responses.receive(10, wait_seconds=0.05)
        responses.extend(parse_response(m.body) for m in messages)
        if messages:
            await data.responses.delete_batch([m.receipt for m in messages])
    return responses


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[None]:
    """Run `worker` in a task for the block; stop it and wait (up to 10 s) for it to finish."""
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
