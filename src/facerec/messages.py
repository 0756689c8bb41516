"""The message contract between the web tier and the app tier: versioned JSON, validated on receipt.

Every message fits the request queue's 1024-byte limit: images travel through the blob store, never in
messages, and free-text fields are bounded in UTF-8 bytes.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, ClassVar, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

MAX_MESSAGE_BYTES = 1024
MAX_RESPONSE_BYTES = 64 * 1024
"""Responses carry every face (up to 10) with up to 10 candidates each: the response queue is not the course's
1024-byte request queue (SQS allows 256 KiB; the local and in-memory response queues are made this large)."""
MAX_TOP_K = 10
"""Most candidates a recognition may ask for per face."""
SCHEMA_VERSION: Final = 1
_TEXT_MAX_BYTES = 120


def _clip_json(text: str, max_bytes: int = _TEXT_MAX_BYTES) -> str:
    """The longest prefix of `text` whose JSON string encoding (as messages are sent: UTF-8, control characters
    escaped as 6-byte \\uXXXX) takes at most `max_bytes`: what bounds a message is its encoded size, and a hostile
    filename of control characters grows 6x when escaped."""
    size = 0
    for index, char in enumerate(text):
        size += len(json.dumps(char, ensure_ascii=False).encode("utf-8", "surrogatepass")) - 2
        if size > max_bytes:
            return text[:index]
    return text


ClippedText = Annotated[str, AfterValidator(_clip_json)]


class InvalidMessage(ValueError):
    """A body that is not a message of this contract (wrong JSON, version or fields)."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    max_bytes: ClassVar[int] = MAX_MESSAGE_BYTES

    def to_json(self) -> str:
        body = self.model_dump_json(exclude_none=True)
        if len(body.encode("utf-8")) > self.max_bytes:  # pragma: no cover - bounded by the field limits
            raise ValueError(f"message of {len(body.encode())} bytes exceeds {self.max_bytes}")
        return body


class RecognitionRequest(_Message):
    v: Literal[1] = SCHEMA_VERSION
    id: str = Field(pattern=r"^[0-9a-f]{32}$", description="Request id (uuid4 hex).")
    input_key: str = Field(max_length=200)
    output_key: str = Field(max_length=200)
    filename: ClippedText = Field("", description="The client's filename, clipped to 120 bytes as JSON.")
    enqueued_at: float = Field(description="Unix time the web tier sent the request.")
    deadline: float | None = Field(None, description="Unix time after which nobody waits for the answer.")
    kind: Literal["recognize", "enroll", "verify"] = Field(
        "recognize",
        description="`enroll`: embed the photo at `input_key` in the gallery store and write the embedding record "
        "to `output_key` there, for `person`. `verify`: compare the subject face of the photo at `input_key` with "
        "the one at `input_key2`, or with the enrolled `person` (nothing is written to `output_key`).",
    )
    person: ClippedText | None = Field(
        None, description="Who is being enrolled (kind `enroll`), or the enrolled person to verify against (`verify`)."
    )
    input_key2: str | None = Field(None, max_length=100, description="The second photo (kind `verify` only).")
    top_k: int | None = Field(
        None, ge=1, le=MAX_TOP_K, description="Candidates to report per face (kind `recognize`; default 1)."
    )
    all_faces: bool | None = Field(
        None, description="Report every face, not only the subject's (kind `recognize`; default false)."
    )
    generation: str | None = Field(
        None,
        pattern=r"^[0-9]{20}$",
        description="The person's generation when the web tier sent the enrollment (kind `enroll` only; None "
        "before the person's first delete): the record is kept only while it is still current.",
    )
    reply_to: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,80}$",
        description="The response queue of the web process waiting for the answer (`<prefix>-resp-<web id>`); "
        "None: the fixed `<prefix>-resp-queue`. Workers answer only on this deployment's response queues "
        "(`Settings.is_reply_queue`), and on the fixed one otherwise.",
    )


class ErrorCode(StrEnum):
    NOT_AN_IMAGE = "not_an_image"
    IMAGE_TOO_LARGE = "image_too_large"
    INPUT_MISSING = "input_missing"
    PROCESSING_FAILED = "processing_failed"
    DEAD_LETTERED = "dead_lettered"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    NOT_ONE_FACE = "not_one_face"
    """Enrollment needs exactly one face in the photo."""
    PERSON_DELETED = "person_deleted"
    """The person was deleted while the photo was being enrolled: no record was kept."""
    NO_FACE = "no_face"
    """Verification found no face in one of the photos (the message names which)."""
    UNKNOWN_PERSON = "unknown_person"
    """Verification against a person nobody enrolled."""


class Box(BaseModel):
    model_config = ConfigDict(frozen=True)
    x1: float
    y1: float
    x2: float
    y2: float


class Candidate(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: ClippedText = Field(description="An enrolled person.")
    distance: float = Field(description="L2 distance from the face to this person's mean embedding.")


class FaceRecord(BaseModel):
    """One face of a photo, as recognition reports every face."""

    model_config = ConfigDict(frozen=True)
    box: Box = Field(description="Face box in the original image's pixels.")
    probability: float = Field(description="Face detection probability.")
    name: ClippedText = Field(description="Nearest person, or `Unknown` when even the nearest is too far.")
    distance: float | None = Field(None, description="L2 distance to the nearest person (None: empty gallery).")
    unknown: bool = False
    candidates: list[Candidate] = Field(
        default_factory=list, description="The nearest people, nearest first, one entry per person."
    )


class RecognitionResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: ClippedText = Field(description="Nearest gallery identity, `Unknown`, or `NoFace`.")
    distance: float | None = Field(None, description="L2 distance to the nearest gallery embedding.")
    box: Box | None = None
    probability: float | None = Field(None, description="Face detection probability.")
    no_face: bool = False
    unknown: bool = False
    candidates: list[Candidate] | None = Field(None, description="The subject face's nearest people (`top_k`).")
    faces: list[FaceRecord] | None = Field(None, description="Every face, largest first (`all_faces` requests).")
    nearest: ClippedText | None = Field(
        None, description="Nearest gallery identity, also when `name` is `Unknown` (its distance is `distance`)."
    )


class VerifiedFace(BaseModel):
    model_config = ConfigDict(frozen=True)
    image: Literal["image1", "image2"] = Field(description="Which photo this face is the subject of.")
    box: Box
    probability: float


class VerificationResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    same: bool = Field(description="Whether the distance is within the threshold: the same person.")
    distance: float = Field(description="L2 distance between the two faces, or the face and the person's mean.")
    threshold: float = Field(description="The distance beyond which the faces are judged different people.")
    faces: list[VerifiedFace]


class ResponseError(BaseModel):
    model_config = ConfigDict(frozen=True)
    code: ErrorCode
    message: ClippedText


class Timings(BaseModel):
    model_config = ConfigDict(frozen=True)
    queue_wait_s: float | None = None
    inference_s: float | None = None
    stages: dict[str, float] | None = Field(
        None,
        description="This answer's share of its batch's worker stages (`fetch`, `decode`, `detect`, `embed`, "
        "`match`): each stage's seconds for the batch divided by the images recognized together. Names are open "
        "(a newer worker may add stages); readers keep the ones they know.",
    )


class RecognitionResponse(_Message):
    max_bytes: ClassVar[int] = MAX_RESPONSE_BYTES
    v: Literal[1] = SCHEMA_VERSION
    id: str = Field(pattern=r"^[0-9a-f]{32}$")
    result: RecognitionResult | None = None
    verification: VerificationResult | None = Field(None, description="The answer to a `verify` request.")
    error: ResponseError | None = None
    timings: Timings | None = None
    worker: Annotated[str, AfterValidator(lambda s: _clip_json(s, 64))] | None = None


def parse_request(body: str) -> RecognitionRequest:
    try:
        return RecognitionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidMessage(str(exc)) from exc


def parse_response(body: str) -> RecognitionResponse:
    try:
        return RecognitionResponse.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidMessage(str(exc)) from exc
