"""Pure mapping between queue messages, recognizer outcomes and response messages (no I/O here)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from facerec import people
from facerec.messages import (
    Box,
    Candidate,
    ErrorCode,
    FaceRecord,
    InvalidMessage,
    RecognitionRequest,
    RecognitionResponse,
    RecognitionResult,
    ResponseError,
    Timings,
    VerificationResult,
    VerifiedFace,
    parse_request,
)
from facerec.people import EmbeddingRecord
from facerec.ports import ReceivedMessage
from facerec.recognition.results import (
    EnrollOutcome,
    FaceResult,
    ImageRejected,
    Outcome,
    Verification,
    VerifyInput,
    VerifyOutcome,
    Wanted,
)

_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class Job:
    """A valid request still to be recognized."""

    message: ReceivedMessage
    request: RecognitionRequest
    received_at: float
    """Unix time this delivery was received."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What to do for one message once it is settled: maybe store a result, send a response, delete it."""

    message: ReceivedMessage
    response: RecognitionResponse
    output: tuple[str, str] | None = None
    """(key, object body) to put in `output_store` before the response is sent."""
    output_store: str = "outputs"
    """`outputs` (the out-bucket: recognition results) or `gallery` (embedding records of enrollments)."""

    @property
    def is_error(self) -> bool:
        return self.response.error is not None


@dataclass(frozen=True, slots=True)
class Discard:
    """A message that cannot be answered (no request id): deleted so it cannot poison the queue."""

    message: ReceivedMessage
    reason: str


def _salvage_id(body: str) -> str | None:
    """The request id of an otherwise invalid body, when it has a well-formed one to answer to."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    request_id = data.get("id") if isinstance(data, dict) else None
    return request_id if isinstance(request_id, str) and _REQUEST_ID.match(request_id) else None


def reply_to(message: ReceivedMessage) -> str | None:
    """The queue a delivery asks to be answered on (`RecognitionRequest.reply_to`), read from the body as it is,
    so that the error answer to a body too broken to be a request also goes back to whoever waits for it. None:
    the fixed response queue. Whether the name may be used is the worker's check (`Settings.is_reply_queue`)."""
    if '"reply_to"' not in message.body:
        return None  # the one-process deployment's messages: no second parse (a key spelt with escapes: fixed queue)
    try:
        data = json.loads(message.body)
    except ValueError:
        return None
    value = data.get("reply_to") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _queue_wait(request: RecognitionRequest, received_at: float) -> float:
    return round(max(0.0, received_at - request.enqueued_at), 4)


def error_answer(
    message: ReceivedMessage,
    request_id: str,
    code: ErrorCode,
    text: str,
    worker: str,
    timings: Timings | None = None,
) -> Answer:
    response = RecognitionResponse(
        id=request_id, error=ResponseError(code=code, message=text), timings=timings, worker=worker
    )
    return Answer(message, response)


def triage(message: ReceivedMessage, received_at: float, worker: str) -> Job | Answer | Discard:
    """Sort one delivery: a job to run, an immediate error answer, or a body to drop."""
    try:
        request = parse_request(message.body)
    except InvalidMessage as exc:
        request_id = _salvage_id(message.body)
        if request_id is None:
            return Discard(message, "invalid request body without an id")
        return error_answer(
            message, request_id, ErrorCode.PROCESSING_FAILED, f"invalid request message: {exc}"[:120], worker
        )
    if request.deadline is not None and received_at > request.deadline:
        timings = Timings(queue_wait_s=_queue_wait(request, received_at))
        return error_answer(
            message, request.id, ErrorCode.DEADLINE_EXCEEDED, "request expired before processing", worker, timings
        )
    return Job(message, request, received_at)


def missing_input_answer(job: Job, worker: str) -> Answer:
    timings = Timings(queue_wait_s=_queue_wait(job.request, job.received_at))
    return error_answer(job.message, job.request.id, ErrorCode.INPUT_MISSING, "input object not found", worker, timings)


def failed_answer(job: Job, text: str, worker: str, code: ErrorCode = ErrorCode.PROCESSING_FAILED) -> Answer:
    timings = Timings(queue_wait_s=_queue_wait(job.request, job.received_at))
    return error_answer(job.message, job.request.id, code, text[:120], worker, timings)


def _error_code(code: str) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:
        return ErrorCode.NOT_AN_IMAGE


def outcome_answer(
    job: Job, outcome: Outcome, inference_s: float, worker: str, stages: dict[str, float] | None = None
) -> Answer:
    """The answer for a recognized image; a result also becomes the out-bucket object (body: the name).
    `stages`: this image's share of the batch's stage seconds (see `Timings.stages`)."""
    timings = Timings(
        queue_wait_s=_queue_wait(job.request, job.received_at), inference_s=round(inference_s, 4), stages=stages
    )
    if isinstance(outcome, ImageRejected):
        return error_answer(job.message, job.request.id, _error_code(outcome.code), outcome.message, worker, timings)
    result = _result(outcome)
    response = RecognitionResponse(id=job.request.id, result=result, timings=timings, worker=worker)
    return Answer(job.message, response, output=(job.request.output_key, result.name))


def wanted(request: RecognitionRequest) -> Wanted:
    """What a recognition request asks for beyond the subject's nearest name."""
    return Wanted(top_k=request.top_k or 1, all_faces=bool(request.all_faces))


def _box(box: tuple[float, float, float, float]) -> Box:
    return Box(x1=box[0], y1=box[1], x2=box[2], y2=box[3])


def _result(face: FaceResult) -> RecognitionResult:
    every = [
        FaceRecord(
            box=_box(one.box),
            probability=one.probability,
            name=one.name,
            distance=one.distance,
            unknown=one.unknown,
            candidates=[Candidate(name=c.name, distance=c.distance) for c in one.candidates],
        )
        for one in face.faces
        if one.box is not None and one.probability is not None
    ]
    return RecognitionResult(
        name=face.name,
        distance=face.distance,
        box=None if face.box is None else _box(face.box),
        probability=face.probability,
        no_face=face.no_face,
        unknown=face.unknown,
        candidates=[Candidate(name=c.name, distance=c.distance) for c in face.candidates] if face.candidates else None,
        faces=every if face.faces else None,
        nearest=face.nearest,
    )


def verify_input(request: RecognitionRequest, image1: bytes, image2: bytes | None) -> VerifyInput:
    return VerifyInput(image1, image2, None if image2 is not None else request.person or "")


def verification_answer(job: Job, outcome: VerifyOutcome, inference_s: float, worker: str) -> Answer:
    """A verification's answer is the response alone: it writes no object (its inputs stay, as recognitions')."""
    timings = Timings(queue_wait_s=_queue_wait(job.request, job.received_at), inference_s=round(inference_s, 4))
    if isinstance(outcome, ImageRejected):
        return error_answer(job.message, job.request.id, _error_code(outcome.code), outcome.message, worker, timings)
    result = _verification(outcome)
    response = RecognitionResponse(id=job.request.id, verification=result, timings=timings, worker=worker)
    return Answer(job.message, response)


def _verification(outcome: Verification) -> VerificationResult:
    faces = [
        VerifiedFace(
            image="image2" if face.image == "image2" else "image1", box=_box(face.box), probability=face.probability
        )
        for face in outcome.faces
    ]
    return VerificationResult(
        same=outcome.same, distance=round(outcome.distance, 6), threshold=outcome.threshold, faces=faces
    )


def enrollment_problem(request: RecognitionRequest) -> str | None:
    """Defence in depth: an enroll request whose person or keys the web tier could not have made."""
    try:
        person = people.normalise_name(request.person or "")
    except people.InvalidPersonName as exc:
        return f"invalid person name: {exc.reason}"
    photos, _ = people.person_prefixes(person)
    if request.output_key != people.embedding_key(person, request.id) or not request.input_key.startswith(
        f"{photos}{request.id}"
    ):
        return "enroll request keys do not match its person and id"
    return None


def enrollment_answer(
    job: Job, outcome: EnrollOutcome, inference_s: float, worker: str, fields: dict[str, object]
) -> Answer:
    """An enrolled photo's embedding record goes to the gallery store; the response names the person."""
    timings = Timings(queue_wait_s=_queue_wait(job.request, job.received_at), inference_s=round(inference_s, 4))
    if isinstance(outcome, ImageRejected):
        return error_answer(job.message, job.request.id, _error_code(outcome.code), outcome.message, worker, timings)
    problem = enrollment_problem(job.request)
    if problem is not None:
        return error_answer(job.message, job.request.id, ErrorCode.PROCESSING_FAILED, problem, worker, timings)
    person = people.normalise_name(job.request.person or "")
    record = EmbeddingRecord.from_vector(
        outcome.vector, person=person, photo_id=job.request.id, generation=job.request.generation, **fields
    )
    box = outcome.box
    result = RecognitionResult(
        name=person, box=Box(x1=box[0], y1=box[1], x2=box[2], y2=box[3]), probability=outcome.probability
    )
    response = RecognitionResponse(id=job.request.id, result=result, timings=timings, worker=worker)
    return Answer(
        job.message, response, output=(job.request.output_key, record.model_dump_json()), output_store="gallery"
    )
