"""The owned MTCNN cascade finds what facenet-pytorch's loop finds; batch norm folding changes nothing."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from facenet_pytorch import MTCNN, InceptionResnetV1
from PIL import Image

from facerec.recognition import cascade
from facerec.recognition.detection import FaceDetector, pick_subject
from facerec.recognition.folding import fold_batch_norms
from facerec.recognition.images import decode_image
from facerec.settings import Settings
from tests.paths import DATASETS

pytestmark = pytest.mark.timeout(120)


def test_pyramid_starts_at_the_smallest_face_and_stops_at_one_cell() -> None:
    scales = cascade.pyramid(250, 250, 20)
    assert scales[0] == pytest.approx(12 / 20)
    assert 250 * scales[-1] >= 12 > 250 * scales[-1] * cascade.FACTOR
    # A relative minimum skips the largest levels: a face 20% of a 250-pixel photo is 50 pixels.
    assert cascade.min_face_for(250, 250, 20, 0.2) == pytest.approx(50)
    assert cascade.pyramid(250, 250, 50)[0] == pytest.approx(12 / 50)
    assert cascade.min_face_for(64, 64, 20, 0.2) == 20


def test_cascade_matches_facenet_pytorch_on_lfw_photos_and_survives_an_empty_image() -> None:
    photos = sorted((DATASETS / "lfw_small").rglob("*.jpg"))[:4]
    images = [decode_image(photo.read_bytes(), 40_000_000) for photo in photos]
    blank = Image.new("RGB", images[0].size, (90, 90, 90))
    detector = FaceDetector(Settings())
    found = detector.detect([*images, blank])
    assert found[-1] is None  # facenet-pytorch's own batching breaks on this with numpy 2
    stock = MTCNN(keep_all=True).eval()
    for image, face in zip(images, found[:-1], strict=True):
        with torch.inference_mode():
            boxes, _ = stock.detect(image)
        assert face is not None and boxes is not None
        subject = boxes[pick_subject(boxes, *image.size)]
        # Same networks and arithmetic; only the R/O-Net input resampling differs (roi_align vs "area").
        assert np.abs(np.asarray(face.box) - subject).max() < 8


def test_folded_batch_norms_give_the_same_embeddings() -> None:
    torch.manual_seed(0)
    model = InceptionResnetV1(classify=False).eval()
    for module in model.modules():  # untrained statistics are identities: make the folding matter
        if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.1, 0.1)  # type: ignore[union-attr]
            module.running_var.uniform_(0.5, 2.0)  # type: ignore[union-attr]
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.1, 0.1)
    folded = copy.deepcopy(model)
    assert fold_batch_norms(folded) == 112
    assert fold_batch_norms(folded) == 0  # idempotent: a shared model folded twice stays right
    crops = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        assert torch.allclose(model(crops), folded(crops), atol=1e-5)
