"""The session memo of detection and embedding (tests/model_memo.py) answers what the model itself answers,
and computes each input once."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from facerec.recognition.detection import FaceDetector
from facerec.recognition.recognizer import Recognizer
from tests.model_memo import memoise_model_work
from tests.standin_model import standin_recognizer

pytestmark = pytest.mark.slow


def mirrored(path: Path) -> bytes:
    """A photo no other test uses (the memo lasts the whole session), still with a face."""
    out = io.BytesIO()
    ImageOps.mirror(Image.open(path).convert("RGB")).save(out, format="JPEG", quality=95)
    return out.getvalue()


def test_memoised_answers_equal_the_models_and_are_computed_once(
    lfw_people: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = [mirrored(paths[0]) for paths in list(lfw_people.values())[:2]]
    expected = standin_recognizer().embed(photos)

    detect, embed = FaceDetector.detect, Recognizer.embed_crops
    computed = {"faces": 0, "crops": 0}

    def counting_detect(self: FaceDetector, images: Any, every: Any = None, **options: Any) -> Any:
        computed["faces"] += len(images)
        return detect(self, images, every, **options)

    def counting_embed(self: Recognizer, crops: Any) -> Any:
        computed["crops"] += len(crops)
        return embed(self, crops)

    # Counted beneath the memo: what it passes on to the model.
    monkeypatch.setattr(FaceDetector, "detect", counting_detect)
    monkeypatch.setattr(Recognizer, "embed_crops", counting_embed)
    memoise_model_work(monkeypatch)
    first = standin_recognizer().embed(photos)
    again = standin_recognizer().embed([photos[1], photos[0]])
    for want, got in zip(expected, first, strict=True):
        assert isinstance(want, np.ndarray) and isinstance(got, np.ndarray)
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert isinstance(again[0], np.ndarray) and isinstance(again[1], np.ndarray)
    assert np.array_equal(again[0], first[1]) and np.array_equal(again[1], first[0])
    assert computed == {"faces": 2, "crops": 2}
