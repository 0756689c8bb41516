"""Test doubles and helpers for facerec, shipped with the package (as `starlette.testclient` is) so that the
test suite, the benchmarks and anyone testing an application built on facerec use the same ones.

Nothing here is used by the service itself."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from PIL import Image

from facerec import people
from facerec.adapters.memory import MemoryBlobStore, MemoryQueue, MemoryReplyQueues
from facerec.logs import error_text
from facerec.messages import (
    MAX_RESPONSE_BYTES,
    Box,
    ErrorCode,
    RecognitionRequest,
    RecognitionResponse,
    RecognitionResult,
    ResponseError,
    Timings,
    VerificationResult,
    VerifiedFace,
    parse_request,
)
from facerec.people import EmbeddingRecord, InvalidPersonName, person_prefixes
from facerec.ports import DataTier, QueueNotFound
from facerec.settings import Settings

log = logging.getLogger(__name__)

# Dummy credentials for moto only: never real ones.
MOTO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
MOTO_REGION = MOTO_CREDENTIALS["AWS_DEFAULT_REGION"]


def jpeg_bytes(color: tuple[int, int, int] = (120, 80, 40), size: tuple[int, int] = (64, 64)) -> bytes:
    """A small valid JPEG of one colour (no face in it)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims `width` x `height` pixels: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def side_by_side(first: Path, second: Path) -> bytes:
    """Two photos pasted side by side into one JPEG (a photo with two faces, from two with one)."""
    left, right = Image.open(first).convert("RGB"), Image.open(second).convert("RGB")
    canvas = Image.new("RGB", (left.width + right.width, max(left.height, right.height)))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG")
    return buffer.getvalue()


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's server on a free loopback port, yielding its endpoint URL.

    A server rather than `mock_aws`: aioboto3 sends its requests through aiohttp, which `mock_aws` (a
    botocore patch) does not intercept reliably, and worker subprocesses need a real endpoint anyway.
    The caller provides (dummy) credentials, e.g. MOTO_CREDENTIALS in the environment."""
    from moto.server import ThreadedMotoServer

    # Its per-request access log would bury a failure's own output.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


Answerer = Callable[[RecognitionRequest, bytes], RecognitionResponse | None]
"""The fake worker's brain: the response to send for a request and its image, or None to send nothing."""


@asynccontextmanager
async def memory_data_tier(settings: Settings) -> AsyncIterator[DataTier]:
    """In-process stores and queues with SQS semantics (dead-letter after `max_receives`)."""
    dead_letters = MemoryQueue(settings.dlq)
    yield DataTier(
        inputs=MemoryBlobStore(settings.in_bucket),
        outputs=MemoryBlobStore(settings.out_bucket),
        requests=MemoryQueue(
            settings.req_queue,
            visibility_timeout=settings.visibility_timeout_s,
            max_receives=settings.max_receives,
            dead_letter=dead_letters,
        ),
        responses=MemoryQueue(settings.resp_queue, max_message_bytes=MAX_RESPONSE_BYTES),
        dead_letters=dead_letters,
        gallery=MemoryBlobStore(settings.gallery_bucket),
        replies=MemoryReplyQueues(settings.prefix, visibility_timeout=settings.visibility_timeout_s),
    )


def digest_name(data: bytes) -> str:
    """A stable pseudo-identity per distinct image: what the fake worker 'recognizes'."""
    return "person-" + hashlib.sha256(data).hexdigest()[:8]


def answer_by_digest(request: RecognitionRequest, data: bytes) -> RecognitionResponse:
    return RecognitionResponse(
        id=request.id,
        result=RecognitionResult(name=digest_name(data), distance=0.5, probability=0.99),
        timings=Timings(queue_wait_s=max(0.0, time.time() - request.enqueued_at), inference_s=0.0),
        worker="instant",
    )


FAKE_VERIFICATION_THRESHOLD = 1.1
"""The fake worker's verification threshold: `same` answers distance 0.4, different people 1.3."""


class InstantWorker:
    """A fake app tier on a DataTier: receive requests, read the image, answer at once, acknowledge."""

    def __init__(self, data: DataTier, answer: Answerer = answer_by_digest, loops: int = 4) -> None:
        self._data = data
        self._answer = answer
        self._loops = loops
        self._tasks: list[asyncio.Task[None]] = []
        self.handled = 0

    async def __aenter__(self) -> InstantWorker:
        self._tasks = [asyncio.create_task(self._run()) for _ in range(self._loops)]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                messages = await self._data.requests.receive(max_messages=10, wait_seconds=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a fake still must not die on a flaky queue
                log.warning("instant_worker_receive_failed", extra={"error": error_text(exc)})
                await asyncio.sleep(0.1)
                continue
            if not messages:
                continue
            replies: dict[str | None, list[str]] = {}
            done: list[str] = []
            for message in messages:
                request = parse_request(message.body)
                if request.kind == "enroll":
                    response = await self._enroll(request)
                elif request.kind == "verify":
                    response = await self._verify(request)
                else:
                    response = self._answer(request, await self._data.inputs.get(request.input_key))
                    if response is not None and response.result is not None:
                        await self._data.outputs.put(request.output_key, response.result.name.encode())
                if response is None:
                    continue  # left to be redelivered (and eventually dead-lettered)
                replies.setdefault(request.reply_to, []).append(response.to_json())
                done.append(message.receipt)
            if replies:
                for reply_to, bodies in replies.items():
                    await self._send(reply_to, bodies)
                await self._data.requests.delete_batch(done)
                self.handled += len(done)

    async def _send(self, reply_to: str | None, bodies: list[str]) -> None:
        """To the request's reply queue, like the real worker (without its checks: a fake trusts its tests)."""
        if reply_to is None or self._data.replies is None:
            await self._data.responses.send_batch(bodies)
            return
        with contextlib.suppress(QueueNotFound):  # its web process is gone: nobody waits for these
            await (await self._data.replies.open(reply_to)).send_batch(bodies)

    async def _verify(self, request: RecognitionRequest) -> RecognitionResponse | None:
        """Verification with the answerer's results standing for the faces: the same name is the same person;
        a person counts as enrolled when the gallery store holds an embedding record for them."""

        def error(code: ErrorCode, message: str) -> RecognitionResponse:
            return RecognitionResponse(id=request.id, error=ResponseError(code=code, message=message), worker="instant")

        sides = [("image1", request.input_key)] + ([("image2", request.input_key2)] if request.input_key2 else [])
        results: list[tuple[str, RecognitionResult]] = []
        for label, key in sides:
            response = self._answer(request, await self._data.inputs.get(key))
            if response is None or response.result is None:
                return response
            if response.result.no_face:
                return error(ErrorCode.NO_FACE, f"no face found in {label}")
            results.append((label, response.result))
        if len(results) == 2:
            same = results[0][1].name == results[1][1].name
        else:
            person = request.person or ""
            try:
                enrolled = self._data.gallery is not None and bool(
                    await self._data.gallery.list(person_prefixes(person)[1])
                )
            except InvalidPersonName:
                enrolled = False
            if not enrolled:
                return error(ErrorCode.UNKNOWN_PERSON, f"{person!r} is not enrolled")
            same = results[0][1].name == person
        faces = [
            VerifiedFace(
                image="image2" if label == "image2" else "image1",
                box=result.box or Box(x1=0, y1=0, x2=1, y2=1),
                probability=result.probability if result.probability is not None else 1.0,
            )
            for label, result in results
        ]
        verification = VerificationResult(
            same=same, distance=0.4 if same else 1.3, threshold=FAKE_VERIFICATION_THRESHOLD, faces=faces
        )
        timings = Timings(queue_wait_s=max(0.0, time.time() - request.enqueued_at), inference_s=0.0)
        return RecognitionResponse(id=request.id, verification=verification, timings=timings, worker="instant")

    async def _enroll(self, request: RecognitionRequest) -> RecognitionResponse | None:
        """Enrollment as the real worker does it, with the answerer's result standing for the detected face."""
        assert self._data.gallery is not None
        response = self._answer(request, await self._data.gallery.get(request.input_key))
        if response is None or response.result is None:
            return response
        if response.result.no_face:
            error = ResponseError(code=ErrorCode.NOT_ONE_FACE, message="no face found in the photo")
            return RecognitionResponse(id=request.id, error=error, worker=response.worker)
        record = EmbeddingRecord.from_vector(
            [1.0, 0.0],
            person=request.person or "",
            photo_id=request.id,
            weights="instant",
            crop_size=0,
            margin=0,
            normalisation="none",
            generation=request.generation,
        )
        refused = await people.commit_enrollment(
            self._data.gallery, request.input_key, request.output_key, record, request.deadline
        )
        if refused is not None:
            code = {
                people.PERSON_DELETED: ErrorCode.PERSON_DELETED,
                people.PHOTO_DELETED: ErrorCode.INPUT_MISSING,
            }.get(refused, ErrorCode.DEADLINE_EXCEEDED)
            error = ResponseError(code=code, message=f"enrollment not kept: {refused}")
            return RecognitionResponse(id=request.id, error=error, worker=response.worker)
        result = response.result.model_copy(update={"name": request.person or "", "unknown": False})
        return response.model_copy(update={"result": result})


def instant_worker_companion(answer: Answerer = answer_by_digest) -> Callable[[FastAPI, DataTier], InstantWorker]:
    def start(app: FastAPI, data: DataTier) -> InstantWorker:
        return InstantWorker(data, answer)

    return start
