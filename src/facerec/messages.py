"""The message contract between the web tier and the app tier: versioned JSON, validated on receipt.

Every message fits the request queue's 1024-byte limit: images travel through the blob store, never in
messages, and free-text fields are bounded in UTF-8 bytes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

MAX_MESSAGE_BYTES = 1024
SCHEMA_VERSION: Final = 1
_TEXT_MAX_BYTES = 120


def _clip_utf8(text: str, max_bytes: int = _TEXT_MAX_BYTES) -> str:
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


ClippedText = Annotated[str, AfterValidator(_clip_utf8)]


class InvalidMessage(ValueError):
    """A body that is not a message of this contract (wrong JSON, version or fields)."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    def to_json(self) -> str:
        body = self.model_dump_json(exclude_none=True)
        if len(body.encode("utf-8")) > MAX_MESSAGE_BYTES:  # pragma: no cover - bounded by the field limits
            raise ValueError(f"message of {len(body.encode())} bytes exceeds {MAX_MESSAGE_BYTES}")
        return body


class RecognitionRequest(_Message):
    v: Literal[1] = SCHEMA_VERSION
    id: str = Field(pattern=r"^[0-9a-f]{32}$", description="Request id (uuid4 hex).")
    input_key: str = Field(max_length=200)
    output_key: str = Field(max_length=200)
    filename: ClippedText = Field("", description="The client's filename, clipped to 120 UTF-8 bytes.")
    enqueued_at: float = Field(description="Unix time the web tier sent the request.")
    deadline: float | None = Field(None, description="Unix time after which nobody waits for the answer.")
    kind: Literal["recognize", "enroll"] = Field(
        "recognize",
        description="`enroll`: embed the photo at `input_key` in the gallery store and write the embedding record "
        "to `output_key` there, for `person`.",
    )
    person: ClippedText | None = Field(None, description="Who is being enrolled (kind `enroll` only).")


class ErrorCode(StrEnum):
    NOT_AN_IMAGE = "not_an_image"
    IMAGE_TOO_LARGE = "image_too_large"
    INPUT_MISSING = "input_missing"
    PROCESSING_FAILED = "processing_failed"
    DEAD_LETTERED = "dead_lettered"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    NOT_ONE_FACE = "not_one_face"
    """Enrollment needs exactly one face in the photo."""


class Box(BaseModel):
    model_config = ConfigDict(frozen=True)
    x1: float
    y1: float
    x2: float
    y2: float


class RecognitionResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: ClippedText = Field(description="Nearest gallery identity, `Unknown`, or `NoFace`.")
    distance: float | None = Field(None, description="L2 distance to the nearest gallery embedding.")
    box: Box | None = None
    probability: float | None = Field(None, description="Face detection probability.")
    no_face: bool = False
    unknown: bool = False
    nearest: ClippedText | None = Field(
        None, description="Nearest gallery identity, also when `name` is `Unknown` (its distance is `distance`)."
    )


class ResponseError(BaseModel):
    model_config = ConfigDict(frozen=True)
    code: ErrorCode
    message: ClippedText


class Timings(BaseModel):
    model_config = ConfigDict(frozen=True)
    queue_wait_s: float | None = None
    inference_s: float | None = None


class RecognitionResponse(_Message):
    v: Literal[1] = SCHEMA_VERSION
    id: str = Field(pattern=r"^[0-9a-f]{32}$")
    result: RecognitionResult | None = None
    error: ResponseError | None = None
    timings: Timings | None = None
    worker: Annotated[str, AfterValidator(lambda s: _clip_utf8(s, 64))] | None = None


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
