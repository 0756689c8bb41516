"""Batched face detection (facenet-pytorch MTCNN) and one aligned crop per image."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from facenet_pytorch.models.mtcnn import fixed_image_standardization
from facenet_pytorch.models.utils.detect_face import extract_face
from PIL import Image

from facerec.recognition import cascade
from facerec.recognition.images import decoded_scale
from facerec.settings import Settings

log = logging.getLogger(__name__)

# P-Net runs on each pyramid level of a batch's images at once; bounding the (scaled) pixels per call keeps a
# batch of large photos from pushing the worker past its memory budget (measured peak RSS for 32 LFW photos
# with facenet-pytorch's loop: 1.27 GB at 4 Mpx per call, 1.02 GB at 0.5 Mpx).
MAX_PIXELS_PER_CALL = 500_000

MAX_FACES_PER_IMAGE = 10
"""Most faces reported for one photo (the subject and the largest others): bounds the embedding work and the
response a crowd photo can cause."""


@dataclass(frozen=True, slots=True)
class DetectedFace:
    crop: torch.Tensor
    """[3, crop_size, crop_size] float32, fixed standardisation (x - 127.5) / 128."""
    box: tuple[float, float, float, float]
    """x1, y1, x2, y2 in the original image's pixels."""
    probability: float
    faces: int = 1
    """How many faces the detector found in the image (this is the subject among them)."""
    others: tuple[DetectedFace, ...] = ()
    """The other faces, largest first, at most MAX_FACES_PER_IMAGE - 1 (only when every face was asked for)."""


def pick_subject(boxes: np.ndarray, width: int, height: int) -> int:
    """Index of the portrait's subject: largest area minus twice the squared distance from the centre
    (Sandberg's rule; more reliable than the highest probability when bystanders are in the photo)."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    centres_x = (boxes[:, 0] + boxes[:, 2]) / 2 - width / 2
    centres_y = (boxes[:, 1] + boxes[:, 3]) / 2 - height / 2
    return int(np.argmax(areas - 2.0 * (centres_x**2 + centres_y**2)))


class FaceDetector:
    """Finds the subject's face in each image and crops it for the embedding model."""

    def __init__(self, settings: Settings) -> None:
        self.crop_size = settings.crop_size
        self.margin = settings.margin
        self.detect_max_side = settings.detect_max_side
        self.min_face_size = settings.min_face_size
        self.min_face_ratio = settings.min_face_ratio
        compiled = _compiled_nets(settings) if settings.detector_variant == "compiled" else {}
        self.nets = cascade.Nets.pretrained(rnet=compiled.get("rnet"), onet=compiled.get("onet"))
        self.compiled = bool(compiled)
        """Whether R-Net and O-Net run from their compiled packages."""

    def detect(
        self,
        images: Sequence[Image.Image],
        every_face: Sequence[bool] | None = None,
        seconds: dict[str, float] | None = None,
        *,
        whole_pyramid: bool = False,
    ) -> list[DetectedFace | None]:
        """The subject face (or None) per RGB image, in order, with the other faces of the images whose
        `every_face` is true. Same-size images go through the cascade together. `seconds`, when given, is added
        the cascade's stage times (see `cascade.detect`) and `crop` (scaling for detection, cutting the crops).

        Subject-only images are first searched for faces of at least `min_face_ratio` of their short side (a
        portrait's subject is that large, and the pyramid levels skipped are most of detection's work); those
        where none is found are searched again down to `min_face_size`, so a small face is still found, only
        slower. Images whose every face is wanted are searched down to `min_face_size` at once. With
        `whole_pyramid` (enrollment) the subject is found as for recognition (the same box, so a photo enrolled
        and then recognized matches itself) and `faces` counts every face down to `min_face_size`."""
        started = time.perf_counter()
        cascade_s = 0.0
        scaled = [self._detection_copy(image) for image in images]
        every = [every_face is not None and every_face[index] for index in range(len(images))]
        # Searched to the end at once: every face wanted, or no level to skip (a small image's ratio is under
        # min_face_size).
        deep = [
            wanted or self._min_face(copy.size, self.min_face_ratio) == self._min_face(copy.size, 0.0)
            for wanted, (copy, _) in zip(every, scaled, strict=True)
        ]

        def search(indices: list[int], whole: bool) -> dict[int, np.ndarray]:
            nonlocal cascade_s
            before = time.perf_counter()
            boxes = self._search([scaled[i][0] for i in indices], [whole or deep[i] for i in indices], seconds)
            cascade_s += time.perf_counter() - before
            return dict(zip(indices, boxes, strict=True))

        everywhere = range(len(images))
        boxes = search(list(everywhere), whole=False)
        shallow = [i for i in everywhere if not deep[i]]
        boxes |= search([i for i in shallow if len(boxes[i]) == 0], whole=True)
        counted = search([i for i in shallow if len(boxes[i])], whole=True) if whole_pyramid else {}
        found = [
            self._faces(images[i], boxes[i], scaled[i][1], *scaled[i][0].size, every[i], len(counted.get(i, boxes[i])))
            for i in everywhere
        ]
        if seconds is not None:
            seconds["crop"] = seconds.get("crop", 0.0) + time.perf_counter() - started - cascade_s
        return found

    def _search(
        self, copies: Sequence[Image.Image], whole: Sequence[bool], seconds: dict[str, float] | None
    ) -> list[np.ndarray]:
        """The cascade's boxes per detection copy, down to `min_face_size` where `whole`, else down to
        `min_face_ratio` of the image; same-size, same-depth copies in one batch."""
        groups: dict[tuple[int, int, bool], list[int]] = defaultdict(list)
        for index, (copy, deep) in enumerate(zip(copies, whole, strict=True)):
            groups[(*copy.size, deep)].append(index)
        found: list[np.ndarray] = [np.zeros((0, 5), dtype=np.float32)] * len(copies)
        for (width, height, deep), members in groups.items():
            min_face = self._min_face((width, height), 0.0 if deep else self.min_face_ratio)
            per_image = self._cascade([copies[i] for i in members], min_face, seconds)
            for index, boxes in zip(members, per_image, strict=True):
                found[index] = boxes.numpy()
        return found

    def _min_face(self, size: tuple[int, int], ratio: float) -> float:
        return cascade.min_face_for(size[1], size[0], self.min_face_size, ratio)

    def _cascade(
        self, same_size: Sequence[Image.Image], min_face: float, seconds: dict[str, float] | None
    ) -> list[torch.Tensor]:
        pixels = torch.from_numpy(np.stack([np.asarray(image, dtype=np.uint8) for image in same_size]))
        with torch.inference_mode():
            # [N, 3, H, W] with channels_last strides, the decoded HWC layout, which is what the cascade runs in:
            # a contiguous NCHW copy here cost two layout conversions of the batch (~10 ms per 16 LFW photos).
            batch = pixels.permute(0, 3, 1, 2).float()
            del pixels
            return cascade.detect(batch, self.nets, min_face, MAX_PIXELS_PER_CALL, cascade.THRESHOLDS, seconds)

    def _detection_copy(self, image: Image.Image) -> tuple[Image.Image, float]:
        """The image to detect on and the factor from its pixels back to the original's."""
        long_side = max(image.size)
        if long_side <= self.detect_max_side:
            return image, 1.0
        factor = long_side / self.detect_max_side
        size = (max(1, round(image.width / factor)), max(1, round(image.height / factor)))
        return image.resize(size, Image.Resampling.BILINEAR), factor

    def _faces(
        self, image: Image.Image, boxes: np.ndarray, factor: float, width: int, height: int, every: bool, count: int
    ) -> DetectedFace | None:
        """The subject (and the others when `every`) among `boxes`; `count`: the faces reported (at least
        the boxes found here)."""
        if boxes.size == 0:
            return None
        count = max(count, len(boxes))
        subject = pick_subject(boxes[:, :4], width, height)
        others: tuple[DetectedFace, ...] = ()
        if every:
            areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            largest = [int(i) for i in np.argsort(-areas, kind="stable") if int(i) != subject]
            others = tuple(self._crop(image, boxes[i], factor, count) for i in largest[: MAX_FACES_PER_IMAGE - 1])
        return self._crop(image, boxes[subject], factor, count, others)

    def _crop(
        self, image: Image.Image, chosen: np.ndarray, factor: float, faces: int, others: tuple[DetectedFace, ...] = ()
    ) -> DetectedFace:
        box = chosen[:4] * factor
        face = extract_face(image, box, self.crop_size, self.margin)
        # Reported in the uploaded image's pixels even when it was decoded at reduced size.
        box = box * decoded_scale(image)
        return DetectedFace(
            crop=fixed_image_standardization(face),
            box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
            probability=float(chosen[4]),
            faces=faces,
            others=others,
        )


def _compiled_nets(settings: Settings) -> dict[str, cascade.Net]:
    """The compiled R-Net and O-Net when their packages are usable here; else none, and why, logged once."""
    from facerec.recognition import compiled_detector

    started = time.perf_counter()
    loaded = compiled_detector.load(settings)
    if isinstance(loaded, str):
        log.warning("detector_compiled_unavailable_using_eager", extra={"reason": loaded})
        return {}
    log.info("detector_compiled_loaded", extra={"seconds": round(time.perf_counter() - started, 3)})
    return dict(loaded)
