"""Real-model work done once per test session: the accuracy tests embed the same lfw_small photos.

`test_open_set_on_held_out_people`, the `verify` CLI tests and `test_lfw_small_accuracy_with_the_real_weights`
all detect and embed (parts of) the same photos with the same weights. Detection and embedding are pure
functions of their input (the pixels, the detector's settings; the crop, the weights), so their results are
kept here, keyed on exactly that input, and every test still runs its whole pipeline (CLI, enrollment rule,
gallery, thresholds) on them: only the recomputation of an identical input is saved. The loaded weights are
shared too (a Recognizer folds its batch norms in place, which is idempotent): `real_model` gives every
`real_recognizer` the session's one copy, so the real weights are read and folded once per session.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from facerec.recognition import weights
from facerec.recognition.detection import DetectedFace, FaceDetector
from facerec.recognition.images import decoded_scale
from facerec.recognition.recognizer import Recognizer
from facerec.settings import Settings

_faces: dict[tuple[Any, ...], DetectedFace | None] = {}
_vectors: dict[tuple[Any, ...], np.ndarray] = {}
_models: dict[tuple[str, str], torch.nn.Module] = {}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _image_key(detector: FaceDetector, image: Image.Image, every: bool, whole: bool) -> tuple[Any, ...]:
    settings = (detector.crop_size, detector.margin, detector.detect_max_side, detector.min_face_size)
    pixels = _digest(image.tobytes())
    return (*settings, detector.min_face_ratio, image.mode, image.size, decoded_scale(image), pixels, every, whole)


def _memoised_detect(real: Callable[..., list[DetectedFace | None]]) -> Callable[..., list[DetectedFace | None]]:
    def detect(
        self: FaceDetector,
        images: Sequence[Image.Image],
        every_face: Sequence[bool] | None = None,
        *,
        whole_pyramid: bool = False,
    ) -> list[DetectedFace | None]:
        every = [every_face is not None and every_face[i] for i in range(len(images))]
        keys = [_image_key(self, image, flag, whole_pyramid) for image, flag in zip(images, every, strict=True)]
        missing = [i for i, key in enumerate(keys) if key not in _faces]
        if missing:
            fresh = real(self, [images[i] for i in missing], [every[i] for i in missing], whole_pyramid=whole_pyramid)
            for index, face in zip(missing, fresh, strict=True):
                _faces[keys[index]] = face
        return [_faces[key] for key in keys]

    return detect


def _memoised_embed(real: Callable[[Recognizer, torch.Tensor], np.ndarray]) -> Callable[..., np.ndarray]:
    def embed_crops(self: Recognizer, crops: torch.Tensor) -> np.ndarray:
        model = (self.model_id, self.variant, self.settings.flip_tta)
        keys = [(*model, tuple(crop.shape), _digest(crop.contiguous().numpy().tobytes())) for crop in crops]
        missing = [i for i, key in enumerate(keys) if key not in _vectors]
        if missing:
            fresh = real(self, crops[missing])
            for index, vector in zip(missing, fresh, strict=True):
                _vectors[keys[index]] = vector
        if not keys:
            return real(self, crops)
        return np.stack([_vectors[key] for key in keys])

    return embed_crops


def _memoised_load(real: Callable[[Settings], torch.nn.Module]) -> Callable[[Settings], torch.nn.Module]:
    def load_embedding_model(settings: Settings) -> torch.nn.Module:
        key = (settings.weights, str(settings.weights_cache_dir))
        if key not in _models:
            _models[key] = real(settings)
        return _models[key]

    return load_embedding_model


# Captured at import: a test's own patch of `weights.load_embedding_model` must not leak into the shared copy.
real_model = _memoised_load(weights.load_embedding_model)
"""The weights `settings` name, loaded on first use and shared for the rest of the session."""


def memoise_model_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """For the calling test: detection, embedding and weight loading answered from this session's results
    when the input is one already seen."""
    monkeypatch.setattr(FaceDetector, "detect", _memoised_detect(FaceDetector.detect))
    monkeypatch.setattr(Recognizer, "embed_crops", _memoised_embed(Recognizer.embed_crops))
    monkeypatch.setattr(weights, "load_embedding_model", _memoised_load(weights.load_embedding_model))
