"""FACEREC_FLIP_TTA: a face's embedding is the unit mean of its own and its mirror image's."""

from __future__ import annotations

import numpy as np
import torch

from facerec.settings import Settings
from tests.standin_model import real_recognizer


def test_flip_tta_averages_the_face_and_its_mirror() -> None:
    # The real weights: an untrained network embeds nearly everything alike, mirror images included.
    recognizer = real_recognizer(Settings(flip_tta=False, unknown_threshold="none"))
    torch.manual_seed(1)
    crops = torch.randn(3, 3, 160, 160) * 0.5
    mirrored = torch.flip(crops, dims=[3])
    plain, plain_mirrored = recognizer.embed_crops(crops), recognizer.embed_crops(mirrored)
    assert np.linalg.norm(plain - plain_mirrored, axis=1).min() > 0.05, "mirror images embed differently"
    expected = plain + plain_mirrored
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)

    recognizer.settings = Settings(flip_tta=True, unknown_threshold="none")
    together = recognizer.embed_crops(crops)
    np.testing.assert_allclose(together, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(recognizer.embed_crops(mirrored), together, atol=1e-5)  # mirror-invariant
