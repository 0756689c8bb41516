"""How deep the detector searches: a subject-only photo first for faces of at least `min_face_ratio` of it, then,
when none is that large, down to `min_face_size`; every-face requests and enrollment down to it at once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from PIL import Image

from facerec.recognition.detection import FaceDetector
from facerec.recognition.images import decode_image
from facerec.settings import Settings

pytestmark = pytest.mark.timeout(120)

CANVAS = 420


def portrait(lfw_people: dict[str, list[Path]]) -> Image.Image:
    photo = next(iter(lfw_people.values()))[0]
    return decode_image(photo.read_bytes(), 40_000_000)


def canvas_with(*placed: tuple[Image.Image, int, tuple[int, int]]) -> Image.Image:
    """A grey canvas with each photo resized to `side` pixels and pasted at `at`."""
    canvas = Image.new("RGB", (CANVAS, CANVAS), (120, 120, 120))
    for photo, side, at in placed:
        canvas.paste(photo.resize((side, side), Image.Resampling.LANCZOS), at)
    return canvas


class CountingDetector(FaceDetector):
    """Records the smallest face each cascade run looked for."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.depths: list[float] = []

    def _cascade(
        self, same_size: Sequence[Image.Image], min_face: float, seconds: dict[str, float] | None
    ) -> list[torch.Tensor]:
        self.depths.append(min_face)
        return super()._cascade(same_size, min_face, seconds)


def test_a_small_face_is_found_by_the_second_deeper_search(lfw_people: dict[str, list[Path]]) -> None:
    # The whole LFW photo at 90 pixels: its face is ~40 pixels, under 0.25 x 420 = 105.
    small = canvas_with((portrait(lfw_people), 90, (300, 40)))
    detector = CountingDetector(Settings(min_face_ratio=0.25))
    [face] = detector.detect([small])
    assert face is not None
    assert 300 < face.box[0] < face.box[2] < 390 and 40 < face.box[1] < face.box[3] < 130
    assert detector.depths == [pytest.approx(105), 20]


def test_a_large_subject_costs_one_shallow_search_and_hides_nothing_from_enrollment(
    lfw_people: dict[str, list[Path]],
) -> None:
    photo = portrait(lfw_people)
    # The subject's face is ~140 of 420 pixels; a bystander's ~40 in the corner.
    both = canvas_with((photo, 300, (60, 60)), (photo, 90, (0, 0)))
    detector = CountingDetector(Settings(min_face_ratio=0.25))
    [subject] = detector.detect([both])
    assert subject is not None and subject.faces == 1 and subject.box[0] > 60
    assert detector.depths == [pytest.approx(105)]

    detector.depths.clear()
    [everyone] = detector.detect([both], [True])
    assert everyone is not None and everyone.faces == 2 and len(everyone.others) == 1
    # The same face; its box may move a few pixels (other P-Net candidates lead to it).
    assert everyone.box == pytest.approx(subject.box, abs=8)
    # Enrollment: the subject's box as recognition finds it (an enrolled photo matches itself), every face
    # counted (it refuses a photo with two).
    [counted] = detector.detect([both], whole_pyramid=True)
    assert counted is not None and counted.faces == 2 and counted.box == subject.box
    assert detector.depths == [20, pytest.approx(105), 20]


def test_no_ratio_searches_once_down_to_the_minimum_face(lfw_people: dict[str, list[Path]]) -> None:
    small = canvas_with((portrait(lfw_people), 90, (300, 40)))
    detector = CountingDetector(Settings(min_face_ratio=0.0))
    [face] = detector.detect([small])
    assert face is not None and detector.depths == [20]
    # A photo with no face at all is searched once more at most, never in a loop.
    detector = CountingDetector(Settings(min_face_ratio=0.25))
    assert detector.detect([Image.new("RGB", (CANVAS, CANVAS), (90, 90, 90))]) == [None]
    assert detector.depths == [pytest.approx(105), 20]
