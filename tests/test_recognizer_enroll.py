"""The real recognizer's enrollment: exactly one face gives a unit embedding that recognizes the person;
no face or several faces are refused with the reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerec.recognition.results import NOT_ONE_FACE, Enrollment, ImageRejected
from facerec.settings import Settings
from facerec.testing import side_by_side
from tests.model_memo import memoise_model_work
from tests.standin_model import real_recognizer


@pytest.mark.timeout(180)  # the real model, on a possibly busy machine
def test_enroll_needs_exactly_one_face_and_enrolled_people_are_recognized(
    lfw_people: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Other tests detect (and embed with these weights) the same lfw photos and the same two-face pair: each is
    # computed once per session (tests/model_memo.py); enrollment's rules still run on what they answer.
    memoise_model_work(monkeypatch)
    # One photo per person: image-to-image distances run larger than the 3-photo means the Unknown threshold is
    # calibrated for, so this test of enrollment's plumbing asks for the nearest name (closed set).
    recognizer = real_recognizer(Settings(unknown_threshold="none"))
    (ann, ann_photos), (bill, bill_photos) = list(lfw_people.items())[2:4]
    blank = io.BytesIO()
    Image.new("RGB", (120, 120), (90, 90, 90)).save(blank, format="PNG")
    outcomes = recognizer.enroll(
        [
            ann_photos[0].read_bytes(),
            bill_photos[0].read_bytes(),
            side_by_side(ann_photos[1], bill_photos[1]),
            blank.getvalue(),
            b"definitely not an image",
        ]
    )
    first, second, pair, empty, garbage = outcomes
    assert isinstance(first, Enrollment) and isinstance(second, Enrollment)
    assert len(first.vector) == 512 and abs(float(np.linalg.norm(first.vector)) - 1.0) < 1e-4
    assert isinstance(pair, ImageRejected) and pair.code == NOT_ONE_FACE and "2 faces" in pair.message
    assert isinstance(empty, ImageRejected) and empty.code == NOT_ONE_FACE and "no face" in empty.message
    assert isinstance(garbage, ImageRejected) and garbage.code == "not_an_image"

    recognizer.use_enrolled({ann: [first.vector], bill: [second.vector]})
    names = [r.name for r in recognizer.recognize([ann_photos[2].read_bytes(), bill_photos[2].read_bytes()])]
    assert names == [ann, bill]
    recognizer.use_enrolled({})
    assert recognizer.gallery is recognizer.base_gallery
