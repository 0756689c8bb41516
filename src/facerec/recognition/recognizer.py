"""The batched recognizer: decode -> detect (MTCNN) -> embed every crop in one forward pass -> nearest name."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from facerec.recognition.compiled import INT8_BATCHES, Int8Embedder, load_int8
from facerec.recognition.detection import DetectedFace, FaceDetector
from facerec.recognition.folding import fold_batch_norms
from facerec.recognition.gallery import NORMALISATION, Gallery, GalleryMeta, unit
from facerec.recognition.images import ImageDecodeError, decode_image, decoded_pixels
from facerec.recognition.results import (
    NO_FACE,
    NO_FACE_CODE,
    NOT_ONE_FACE,
    UNKNOWN,
    UNKNOWN_PERSON,
    Candidate,
    Enrollment,
    EnrollOutcome,
    FaceResult,
    ImageInput,
    ImageRejected,
    Outcome,
    Verification,
    VerifiedFace,
    VerifyInput,
    VerifyOutcome,
    Wanted,
)
from facerec.recognition.thresholds import recognition_threshold, verification_threshold
from facerec.settings import Settings

log = logging.getLogger(__name__)

Embedding = np.ndarray
"""[512] float32, unit length."""

STAGES = ("decode", "detect", "embed", "match")
"""The parts of `recognize()` timed into `last_stages`, in order."""

# Largest forward pass: measured as fast as 32 (87 vs 85 faces/s) with ~70 MB less peak memory.
EMBED_CHUNK = 16


class Recognizer:
    """Implements `BatchRecognizer`. Not thread-safe: one inference at a time per instance."""

    def __init__(
        self,
        settings: Settings,
        gallery: Gallery | None = None,
        *,
        model: torch.nn.Module | None = None,
        model_id: str | None = None,
        threshold_needed: bool = True,
    ) -> None:
        """`model`/`model_id` replace the configured weights (tests); by default they come from `weights.py`.

        Raises ThresholdUnavailable when no Unknown threshold applies (see `recognition_threshold`), unless
        not `threshold_needed` (enrolling and verifying never name anyone from the gallery)."""
        torch.set_num_threads(settings.torch_threads)
        self.int8: Int8Embedder | None = None
        """The int8 package (`embedding_variant` int8 and built for these weights), else None: fp32."""
        if model is None:
            from facerec.recognition.weights import load_embedding_model, weights_id

            model_id = weights_id(settings)
            if settings.embedding_variant == "int8":
                self.int8 = _load_int8(settings, model_id)
            # With the int8 package the fp32 weights are not needed: not loading them saves ~110 MB and their
            # checksum pass at start-up.
            model = None if self.int8 is not None else load_embedding_model(settings)
        self.settings = settings
        self.model_id = model_id or "unidentified"
        self._int8_warm = False
        self.variant = "int8" if self.int8 is not None else "fp32"
        """Which model makes the embeddings; galleries record it (`GalleryMeta.embedding_variant`)."""
        self.model: torch.nn.Module | None = None
        if model is not None:
            # Batch norms folded into the convolutions (exact up to rounding, see folding.py); channels_last:
            # measured faster for this network's convolutions on CPU (37 -> 45 faces/s).
            fold_batch_norms(model)
            self.model = model.eval().to(memory_format=torch.channels_last)
        self.detector = FaceDetector(settings)
        self.gallery = gallery if gallery is not None else Gallery.empty(self.gallery_meta())
        self.gallery.check_compatible(self.model_id, settings)
        if self.gallery.meta.embedding_variant != self.variant and len(self.gallery):
            # Within the documented distance of each other (docs/benchmarks.md): they still match.
            log.info(
                "gallery_variant_differs", extra={"gallery": self.gallery.meta.embedding_variant, "model": self.variant}
            )
        self.base_gallery = self.gallery
        """The gallery given at start-up; people enrolled through the data tier are added to it."""
        self.unknown_threshold: float | None = None
        """Distance beyond which a face is Unknown; None: closed set (or not `threshold_needed`)."""
        self.last_stages: dict[str, float] = {}
        """Seconds per STAGES of the latest `recognize()` call (its whole batch), for the worker's answers."""
        if threshold_needed:
            self.unknown_threshold = recognition_threshold(settings, self.model_id, self.gallery.meta.unknown_threshold)

    def gallery_meta(self) -> GalleryMeta:
        """The metadata a gallery made by this recognizer records."""
        return GalleryMeta(
            weights=self.model_id,
            crop_size=self.settings.crop_size,
            margin=self.settings.margin,
            normalisation=NORMALISATION,
            unknown_threshold=threshold if isinstance(threshold := self.settings.unknown_threshold, float) else None,
            embedding_variant=self.variant,
        )

    def warm_up(self) -> None:
        """Run the whole pipeline once so the first real batch does not pay for lazy initialisation."""
        started = time.perf_counter()
        if not self._int8_warm:
            self.embed_crops(torch.zeros(1, 3, self.settings.crop_size, self.settings.crop_size))
            # The int8 package has no lazy state of its own beyond the first call's: a worker forked from a
            # template that warmed it up skips the padded 16-face pass (~0.1 s of its start-up); the detector
            # below still starts the child's own thread pool.
            self._int8_warm = self.int8 is not None
        self.detector.detect([Image.new("RGB", (64, 64), (128, 128, 128))])
        log.info("recognizer_warm", extra={"seconds": round(time.perf_counter() - started, 3)})

    def embed_crops(self, crops: torch.Tensor) -> np.ndarray:
        """[B, 3, S, S] standardised crops -> [B, 512] unit embeddings, in forward passes of <= EMBED_CHUNK.

        With `flip_tta` each embedding is the unit mean of the crop's and its mirror image's."""
        chunks = []
        forward = self.int8 if self.int8 is not None else self.model
        assert forward is not None
        # The int8 package runs fixed batch sizes (smaller chunks are padded): its largest is its chunk.
        step = max(INT8_BATCHES) if self.int8 is not None else min(self.settings.batch_max, EMBED_CHUNK)
        with torch.inference_mode():
            for start in range(0, len(crops), step):
                batch = crops[start : start + step].contiguous(memory_format=torch.channels_last)
                vectors = forward(batch).float()
                if self.settings.flip_tta:
                    mirrored = torch.flip(batch, dims=[3]).contiguous(memory_format=torch.channels_last)
                    vectors = unit(vectors.numpy()) + unit(forward(mirrored).float().numpy())
                    chunks.append(np.asarray(vectors))
                    continue
                chunks.append(vectors.numpy())
        if not chunks:
            return np.zeros((0, 512), dtype=np.float32)
        return unit(np.concatenate(chunks))

    def embed(self, images: Sequence[ImageInput]) -> list[Embedding | Outcome]:
        """One unit embedding per image with a face; otherwise its NoFace result or ImageRejected."""
        faces, detected = self._detect(images)
        outcomes: list[Embedding | Outcome] = list(detected)
        found = [(index, face) for index, face in enumerate(faces) if face is not None]
        if found:
            vectors = self.embed_crops(torch.stack([face.crop for _, face in found]))
            for (index, _), vector in zip(found, vectors, strict=True):
                outcomes[index] = vector
        return outcomes

    def enroll(self, images: Sequence[ImageInput]) -> list[EnrollOutcome]:
        """An embedding for each photo with exactly one face; `not_one_face` or the decode error otherwise.
        Every face counts, however small (the whole pyramid is searched)."""
        faces, outcomes = self._detect(images, whole_pyramid=True)
        results: list[EnrollOutcome] = []
        usable = [(index, face) for index, face in enumerate(faces) if face is not None and face.faces == 1]
        vectors: np.ndarray | list[Embedding] = (
            self.embed_crops(torch.stack([face.crop for _, face in usable])) if usable else []
        )
        by_index = dict(zip([index for index, _ in usable], vectors, strict=True))
        for index, (face, outcome) in enumerate(zip(faces, outcomes, strict=True)):
            if index in by_index and face is not None:
                results.append(Enrollment([float(x) for x in by_index[index]], face.box, face.probability))
            elif isinstance(outcome, ImageRejected):
                results.append(outcome)
            elif face is None:
                results.append(ImageRejected(NOT_ONE_FACE, "no face found in the photo"))
            else:
                results.append(ImageRejected(NOT_ONE_FACE, f"{face.faces} faces found; enroll needs exactly one"))
        return results

    def embedding_fields(self) -> dict[str, object]:
        meta = self.gallery_meta()
        return {
            "weights": meta.weights,
            "crop_size": meta.crop_size,
            "margin": meta.margin,
            "normalisation": meta.normalisation,
        }

    def use_enrolled(self, people: dict[str, list[list[float]]]) -> None:
        """The start-up gallery plus these people (one mean embedding each), for the batches that follow."""
        enrolled = Gallery.from_people(
            {name: [np.asarray(v, dtype=np.float32) for v in vectors] for name, vectors in people.items()},
            self.gallery_meta(),
        )
        if len(enrolled) == 0:
            self.gallery = self.base_gallery
            return
        base = self.base_gallery
        # One assignment: a batch in another thread sees the old gallery or the new one, never a mix.
        self.gallery = Gallery(
            [*base.names, *enrolled.names], np.concatenate([base.embeddings, enrolled.embeddings]), base.meta
        )

    def recognize(self, images: Sequence[ImageInput], wanted: Sequence[Wanted] | None = None) -> list[Outcome]:
        """One outcome per image, in order; never raises for a bad image. `wanted` (one per image): how many
        candidates per face, and whether to report every face (by default: the subject's nearest person)."""
        seconds = dict.fromkeys(STAGES, 0.0)
        wanted = list(wanted) if wanted is not None else [Wanted()] * len(images)
        if len(wanted) != len(images):
            raise ValueError(f"{len(wanted)} wishes for {len(images)} images")
        faces, outcomes = self._detect(images, [w.all_faces for w in wanted], seconds)
        found = [(index, face) for index, face in enumerate(faces) if face is not None]
        # Every crop of the batch (subjects, then the other faces asked for) in one embedding pass.
        crops = [face for _, face in found] + [other for _, face in found for other in face.others]
        if found:
            started = time.perf_counter()
            vectors = iter(self.embed_crops(torch.stack([face.crop for face in crops])))
            embedded = time.perf_counter()
            seconds["embed"] = embedded - started
            subjects = [next(vectors) for _ in found]
            # One gallery for the whole batch: use_enrolled() may replace self.gallery from another thread at
            # any moment, and an index found in one gallery must be named from that same gallery.
            gallery = self.gallery
            for (index, face), vector in zip(found, subjects, strict=True):
                top_k = wanted[index].top_k
                result = self._name(gallery, face, vector, top_k)
                if wanted[index].all_faces:
                    every = [result, *(self._name(gallery, other, next(vectors), top_k) for other in face.others)]
                    every.sort(key=_area, reverse=True)
                    result = replace(result, faces=tuple(every))
                outcomes[index] = result
            seconds["match"] = time.perf_counter() - embedded
        # One assignment, read by the worker loop after this call returns (one inference at a time).
        self.last_stages = seconds
        log.info(
            "recognized",
            extra={
                "images": len(images),
                "faces": len(crops),
                **{f"{stage}_s": round(value, 4) for stage, value in seconds.items()},
            },
        )
        return outcomes

    def verify(self, requests: Sequence[VerifyInput]) -> list[VerifyOutcome]:
        """Is the subject of `image1` the subject of `image2`, or the enrolled `person`? One outcome per request,
        in order (every photo detected and embedded in one pass); never raises for a bad image."""
        images: list[ImageInput] = []
        for request in requests:
            images.append(request.image1)
            if request.image2 is not None:
                images.append(request.image2)
        embedded = iter(self._embed_subjects(images))
        gallery = self.gallery  # one snapshot for the batch, as in recognize()
        outcomes: list[VerifyOutcome] = []
        for request in requests:
            first = next(embedded)
            second = next(embedded) if request.image2 is not None else None
            outcomes.append(self._compare(gallery, request, first, second))
        return outcomes

    def _compare(
        self,
        gallery: Gallery,
        request: VerifyInput,
        first: tuple[DetectedFace, Embedding] | Outcome,
        second: tuple[DetectedFace, Embedding] | Outcome | None,
    ) -> VerifyOutcome:
        sides = [("image1", first)] + ([("image2", second)] if second is not None else [])
        for label, side in sides:
            if isinstance(side, ImageRejected):
                return ImageRejected(side.code, f"{label}: {side.message}")
            if isinstance(side, FaceResult):
                return ImageRejected(NO_FACE_CODE, f"no face found in {label}")
        faces: list[VerifiedFace] = []
        vectors: list[Embedding] = []
        for label, side in sides:
            assert isinstance(side, tuple)
            faces.append(VerifiedFace(label, side[0].box, side[0].probability))
            vectors.append(side[1])
        if second is not None:
            reference = vectors[1]
            # Face to face: two single photos, each with its own pose and lighting, lie further apart than a
            # photo from a person's mean embedding; this threshold is calibrated on such pairs.
            threshold = verification_threshold(self.settings, self.model_id)
        else:
            person = request.person or ""
            known = gallery.person_embedding(person)
            if known is None:
                return ImageRejected(UNKNOWN_PERSON, f"{person!r} is not enrolled")
            reference = known
            # Face to a person's mean embedding is exactly what recognition measures, so "is this that person"
            # is decided where recognition would stop naming them (`Unknown`); without a recognition threshold
            # (never Unknown) the face-to-face one is the only calibrated boundary, and a stricter one, as a
            # mean lies nearer to each of the person's photos than two photos lie to each other.
            threshold = (
                self.unknown_threshold
                if self.unknown_threshold is not None
                else verification_threshold(self.settings, self.model_id)
            )
        distance = float(np.linalg.norm(vectors[0].astype(np.float64) - reference.astype(np.float64)))
        return Verification(distance <= threshold, distance, threshold, tuple(faces))

    def _embed_subjects(self, images: Sequence[ImageInput]) -> list[tuple[DetectedFace, Embedding] | Outcome]:
        """The subject face and its embedding per image with a face; its NoFace result or ImageRejected if not."""
        faces, detected = self._detect(images)
        outcomes: list[tuple[DetectedFace, Embedding] | Outcome] = list(detected)
        found = [(index, face) for index, face in enumerate(faces) if face is not None]
        if found:
            vectors = self.embed_crops(torch.stack([face.crop for _, face in found]))
            for (index, face), vector in zip(found, vectors, strict=True):
                outcomes[index] = (face, vector)
        return outcomes

    def _detect(
        self,
        images: Sequence[ImageInput],
        every_face: Sequence[bool] | None = None,
        seconds: dict[str, float] | None = None,
        *,
        whole_pyramid: bool = False,
    ) -> tuple[list[DetectedFace | None], list[Outcome]]:
        """Faces for the decodable images; outcomes pre-filled with NoFace / ImageRejected for the rest.

        Decoded in parts of at most `decode_pixel_budget` pixels (counted from the headers before decoding),
        each detected and released before the next is decoded: a batch of large photos splits rather than
        holding them all at once. `seconds`, when given, is added the `decode` and `detect` times."""
        outcomes: list[Outcome] = [_no_face()] * len(images)
        faces: list[DetectedFace | None] = [None] * len(images)
        budget, max_side = self.settings.decode_pixel_budget, self.settings.decode_max_side
        part: list[int] = []
        held = 0
        for index, data in enumerate(images):
            pixels = decoded_pixels(data, max_side)
            if part and held + pixels > budget:
                self._detect_part(images, part, every_face, faces, outcomes, seconds, whole_pyramid)
                part, held = [], 0
            part.append(index)
            held += pixels
        if part:
            self._detect_part(images, part, every_face, faces, outcomes, seconds, whole_pyramid)
        return faces, outcomes

    def _detect_part(
        self,
        images: Sequence[ImageInput],
        part: Sequence[int],
        every_face: Sequence[bool] | None,
        faces: list[DetectedFace | None],
        outcomes: list[Outcome],
        seconds: dict[str, float] | None = None,
        whole_pyramid: bool = False,
    ) -> None:
        started = time.perf_counter()
        decoded: list[Image.Image] = []
        positions: list[int] = []
        every: list[bool] = []
        for index in part:
            try:
                decoded.append(
                    decode_image(images[index], self.settings.max_image_pixels, self.settings.decode_max_side)
                )
                positions.append(index)
                every.append(every_face is not None and every_face[index])
            except ImageDecodeError as exc:
                outcomes[index] = ImageRejected(exc.code, exc.message)
        decoded_at = time.perf_counter()
        if whole_pyramid:
            detected = self.detector.detect(decoded, every, whole_pyramid=True)
        else:
            detected = self.detector.detect(decoded, every) if any(every) else self.detector.detect(decoded)
        if seconds is not None:
            seconds["decode"] = seconds.get("decode", 0.0) + decoded_at - started
            seconds["detect"] = seconds.get("detect", 0.0) + time.perf_counter() - decoded_at
        for index, face in zip(positions, detected, strict=True):
            faces[index] = face

    def _name(self, gallery: Gallery, face: DetectedFace, vector: Embedding, top_k: int = 1) -> FaceResult:
        if len(gallery) == 0:
            return FaceResult(UNKNOWN, None, face.box, face.probability, unknown=True)
        indices, distances = gallery.nearest(vector[None, :])
        distance = float(distances[0])
        (ranked,) = gallery.candidates(vector[None, :], top_k)
        candidates = tuple(Candidate(name, near) for name, near in ranked)
        nearest = gallery.names[int(indices[0])]
        if self.unknown_threshold is not None and distance > self.unknown_threshold:
            return FaceResult(
                UNKNOWN, distance, face.box, face.probability, unknown=True, nearest=nearest, candidates=candidates
            )
        return FaceResult(nearest, distance, face.box, face.probability, nearest=nearest, candidates=candidates)


def _load_int8(settings: Settings, model_id: str) -> Int8Embedder | None:
    """The int8 package for these weights, or None (logged once, with why: the worker then embeds in fp32)."""
    from facerec.recognition.weights import weights_sha256

    started = time.perf_counter()
    checksum = weights_sha256(settings)
    loaded = load_int8(settings, model_id, checksum) if checksum is not None else "weights not prepared"
    if isinstance(loaded, str):
        log.warning("int8_unavailable_using_fp32", extra={"reason": loaded})
        return None
    log.info(
        "int8_loaded",
        extra={"path": str(loaded.folder), "seconds": round(time.perf_counter() - started, 3)},
    )
    return loaded


def _area(face: FaceResult) -> float:
    if face.box is None:
        return 0.0
    x1, y1, x2, y2 = face.box
    return (x2 - x1) * (y2 - y1)


def _no_face() -> FaceResult:
    return FaceResult(NO_FACE, None, None, None, no_face=True)
