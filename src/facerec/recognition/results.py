"""What the recognizer returns, importable without torch (the worker maps these onto messages)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

UNKNOWN = "Unknown"
NO_FACE = "NoFace"


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
    nearest: str | None = None
    """The nearest gallery identity, also when the answer is Unknown (beyond the threshold)."""


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
EnrollOutcome = Enrollment | ImageRejected
"""ImageRejected with code `not_one_face` for a photo with no face or several."""
ImageInput = bytes | Image.Image


class BatchRecognizer(Protocol):
    """Synchronous and CPU-bound: callers run it in a thread."""

    def recognize(self, images: Sequence[ImageInput]) -> list[Outcome]:
        """One outcome per input, in order; never raises for a bad image."""
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
