"""Recognizers for tests: the real pipeline around an untrained (seeded) InceptionResnetV1, or the real weights.

An untrained network does the same arithmetic as the trained one, so batching, ordering, gallery and CLI
behaviour can be tested without the converted weights; accuracy tests use `real_recognizer` instead.
"""

from __future__ import annotations

import os
import sys
import types
from functools import lru_cache

import pytest
import torch

from facerec.recognition.gallery import Gallery
from facerec.recognition.recognizer import Recognizer
from facerec.settings import Settings

STANDIN_ID = "standin-random-seed-0"


@lru_cache(maxsize=1)
def standin_model() -> torch.nn.Module:
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(0)
    return InceptionResnetV1(classify=False).eval()


def closed_set_unless_set(settings: Settings) -> Settings:
    """An untrained network has no calibrated Unknown threshold: these plumbing tests use a closed set unless
    they set a threshold themselves."""
    if settings.unknown_threshold is None:
        return settings.model_copy(update={"unknown_threshold": "none"})
    return settings


def standin_recognizer(settings: Settings | None = None, gallery: Gallery | None = None) -> Recognizer:
    return Recognizer(
        closed_set_unless_set(settings or Settings()), gallery, model=standin_model(), model_id=STANDIN_ID
    )


def standin_weights_module() -> types.ModuleType:
    """Takes the place of `facerec.recognition.weights` (for CLI tests that build their own Recognizer)."""
    module = types.ModuleType("facerec.recognition.weights")
    module.load_embedding_model = lambda settings: standin_model()  # type: ignore[attr-defined]
    module.weights_id = lambda settings: STANDIN_ID  # type: ignore[attr-defined]
    # Never prepared, so no int8 package is built for it: the recognizer embeds with the stand-in in fp32.
    module.weights_sha256 = lambda settings: None  # type: ignore[attr-defined]
    return module


def install_standin_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "facerec.recognition.weights", standin_weights_module())
    if not os.environ.get("FACEREC_UNKNOWN_THRESHOLD"):
        monkeypatch.setenv("FACEREC_UNKNOWN_THRESHOLD", "none")  # no calibrated threshold for a random network


def real_recognizer(settings: Settings | None = None, gallery: Gallery | None = None) -> Recognizer:
    """The recognizer with the casia-webface weights (converted into the cache on first use), as
    `Recognizer(settings)` builds it, but with the session's one loaded copy of the weights (tests/model_memo.py):
    reading and folding them costs ~2 s per recognizer on this machine, and they never change."""
    from facerec.recognition.weights import weights_id
    from tests.model_memo import real_model

    settings = settings or Settings()
    return Recognizer(settings, gallery, model=real_model(settings), model_id=weights_id(settings))
