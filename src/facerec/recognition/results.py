"""What the recognizer returns, importable without torch (the worker maps these onto messages)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

UNKNOWN = "Unknown"
NO_FACE = "NoFace"


@dataclass(frozen=True, slots=True)
class Candidate:
    """An enrolled person and the face's distance to their mean embedding."""

    name: str
    distance: float


@dataclass(frozen=True, slots=True)
class FaceResult:
    """One image's answer: the nearest gallery identity (or Unknown / NoFace)."""

    name: str
    distance: float | None
    box: tuple[float, float, float, float] | None
    """x1, y1, x2, y2 in the original image's pixels."""
    probability: float | None
    no_face: bool = False
    unknown: bool = False
    candidates: tuple[Candidate, ...] = ()
    """The nearest people, nearest first, one per person (as many as asked for; fewer in a small gallery)."""
    faces: tuple[FaceResult, ...] = ()
    """Every face in the photo, largest first, the subject among them (only when asked for; each without
    `faces` of its own)."""
    nearest: str | None = None
    """The nearest gallery identity, also when the answer is Unknown (beyond the threshold)."""


@dataclass(frozen=True, slots=True)
class Wanted:
    """What a recognition asks for beyond the subject's nearest name."""

    top_k: int = 1
    all_faces: bool = False


NO_FACE_CODE = "no_face"
UNKNOWN_PERSON = "unknown_person"


@dataclass(frozen=True, slots=True)
class VerifyInput:
    """Two photos, or a photo and an enrolled person."""

    image1: ImageInput
    image2: ImageInput | None = None
    person: str | None = None


@dataclass(frozen=True, slots=True)
class VerifiedFace:
    image: str
    """`image1` or `image2`."""
    box: tuple[float, float, float, float]
    probability: float


@dataclass(frozen=True, slots=True)
class Verification:
    same: bool
    distance: float
    threshold: float
    faces: tuple[VerifiedFace, ...]


@dataclass(frozen=True, slots=True)
class ImageRejected:
    """The input could not be used as an image; retrying will not help."""

    code: str
    """`not_an_image` (empty, undecodable, truncated, unsupported type) or `image_too_large`."""
    message: str


@dataclass(frozen=True, slots=True)
class Enrollment:
    """A photo usable for enrollment: exactly one face, and its unit embedding."""

    vector: list[float]
    box: tuple[float, float, float, float]
    probability: float


NOT_ONE_FACE = "not_one_face"

Outcome = FaceResult | ImageRejected
VerifyOutcome = Verification | ImageRejected
"""ImageRejected with code `no_face` (naming the photo), `unknown_person`, or the photo's decode error."""
EnrollOutcome = Enrollment | ImageRejected
"""ImageRejected with code `not_one_face` for a photo with no face or several."""
ImageInput = bytes | Image.Image


class BatchRecognizer(Protocol):
    """Synchronous and CPU-bound: callers run it in a thread."""

    def recognize(self, images: Sequence[ImageInput]) -> list[Outcome]:
        """One outcome per input, in order; never raises for a bad image.

        A recognizer may also take `wanted` (one `Wanted` per image: candidates, every face); the worker passes it
        when `recognize` has that parameter (a recognizer without it answers without candidates and other faces)."""
        ...


class Verifier(Protocol):
    """Synchronous and CPU-bound, like BatchRecognizer."""

    def verify(self, requests: Sequence[VerifyInput]) -> list[VerifyOutcome]:
        """One outcome per request, in order; never raises for a bad image."""
        ...


class Enroller(Protocol):
    """Synchronous and CPU-bound, like BatchRecognizer; also describes how its embeddings are made."""

    def enroll(self, images: Sequence[ImageInput]) -> list[EnrollOutcome]:
        """One outcome per input, in order; never raises for a bad image."""
        ...

    def embedding_fields(self) -> dict[str, object]:
        """weights, crop_size, margin, normalisation: recorded with each enrolled embedding."""
        ...

    def use_enrolled(self, people: dict[str, list[list[float]]]) -> None:
        """Recognize these people (name -> unit embeddings) too, from the next batch on."""
        ...
