"""Galleries: the known people's reference embeddings, with the model settings they were made with.

Two file formats:
- ours: a `torch.save`d dict (format tag, version, names, [N, 512] float32 unit embeddings, metadata),
  loaded with `weights_only=True` so a gallery file cannot run code;
- the course's `data.pt`: `[list of [1, 512] tensors, list of names]` with no metadata, accepted only when
  `course_gallery_made_with` states how it was made.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerec.settings import Settings, get_settings

log = logging.getLogger(__name__)

FORMAT_TAG = "facerec-gallery"
FORMAT_VERSION = 1
NORMALISATION = "fixed_standardization"  # (x - 127.5) / 128, as the 2018 FaceNet models were trained
EMBEDDING_DIM = 512


class GalleryError(Exception):
    """The gallery file cannot be read or is not a gallery."""


class GalleryMismatch(GalleryError):
    """The gallery was made with other model settings: its distances would be meaningless."""


@dataclass(frozen=True, slots=True)
class GalleryMeta:
    weights: str
    """`weights_id` of the model (ours) or the stated weights name (course format)."""
    crop_size: int
    margin: int
    normalisation: str = NORMALISATION
    created: float = field(default_factory=time.time)
    source: str = "facerec"
    """`facerec` (our format) or `course` (a data.pt whose settings were stated by the operator)."""
    unknown_threshold: float | None = None
    """The Unknown threshold set when the gallery was made (FACEREC_UNKNOWN_THRESHOLD); used when none is set."""
    embedding_variant: str = "fp32"
    """`fp32` or `int8` (`Recognizer.variant`): which model made the embeddings. Not a mismatch: the two lie
    within the distance documented in docs/benchmarks.md of each other, so either matches the other's gallery."""

    def differences(self, weights: str, settings: Settings) -> list[str]:
        expected = {"weights": weights, "crop_size": settings.crop_size, "margin": settings.margin}
        expected["normalisation"] = NORMALISATION
        return [
            f"{key}: gallery {getattr(self, key)!r}, model {value!r}"
            for key, value in expected.items()
            if getattr(self, key) != value
        ]


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (float32)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    scaled: np.ndarray = vectors / np.maximum(norms, 1e-12)  # numpy's stubs type ufunc results as Any
    return scaled


@dataclass(frozen=True)
class Gallery:
    names: list[str]
    embeddings: np.ndarray
    """[N, 512] float32, unit length."""
    meta: GalleryMeta

    def __post_init__(self) -> None:
        if self.embeddings.shape != (len(self.names), EMBEDDING_DIM):
            raise GalleryError(f"embeddings of shape {self.embeddings.shape} for {len(self.names)} names")

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def empty(cls, meta: GalleryMeta) -> Gallery:
        return cls([], np.zeros((0, EMBEDDING_DIM), dtype=np.float32), meta)

    @classmethod
    def from_people(cls, people: Mapping[str, Sequence[np.ndarray]], meta: GalleryMeta) -> Gallery:
        """One entry per person: the mean of their unit embeddings, renormalised (steadier than any one photo)."""
        names = sorted(name for name, vectors in people.items() if len(vectors))
        if not names:
            return cls.empty(meta)
        means = np.stack([unit(np.stack(people[name])).mean(axis=0) for name in names])
        return cls(names, unit(means), meta)

    def check_compatible(self, weights_id: str, settings: Settings) -> None:
        """Raise GalleryMismatch unless the gallery was made with these model settings."""
        # A course gallery records no weights id, only the weights name the operator stated.
        expected = weights_id if self.meta.source == "facerec" else settings.weights
        differences = self.meta.differences(expected, settings)
        if differences:
            raise GalleryMismatch(
                "gallery was made with other model settings (" + "; ".join(differences) + "); "
                "re-enroll with `facerec enroll` or run the model with the gallery's settings"
            )

    def nearest(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index of and L2 distance to the nearest entry for each [512] query row. Needs a non-empty gallery."""
        squared = self._squared_distances(queries)
        indices = squared.argmin(axis=1)
        distances = np.sqrt(np.maximum(squared[np.arange(len(squared)), indices], 0.0))
        return indices, distances

    def candidates(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """For each [512] query row, the `k` nearest people with their distances, nearest first.

        One entry per name: a gallery normally holds one mean embedding per person, but the start-up gallery
        plus people enrolled through the API (or a course data.pt) can hold a name twice; its nearest entry
        stands for it. Ties keep gallery order, as `nearest` does, so the first candidate is `nearest`'s."""
        squared = self._squared_distances(queries)
        found: list[list[tuple[str, float]]] = []
        for row in squared:
            seen: set[str] = set()
            people: list[tuple[str, float]] = []
            for index in np.argsort(row, kind="stable"):
                name = self.names[int(index)]
                if name in seen:
                    continue
                seen.add(name)
                people.append((name, float(np.sqrt(max(float(row[index]), 0.0)))))
                if len(people) == k:
                    break
            found.append(people)
        return found

    def person_embedding(self, name: str) -> np.ndarray | None:
        """The unit mean of `name`'s entries ([512]), or None when the gallery does not know them."""
        rows = [index for index, known in enumerate(self.names) if known == name]
        if not rows:
            return None
        mean: np.ndarray = unit(self.embeddings[rows].mean(axis=0))
        return mean

    def _squared_distances(self, queries: np.ndarray) -> np.ndarray:
        # |q - g|^2 = |q|^2 + |g|^2 - 2 q.g avoids materialising [Q, N, 512] differences; float64 keeps the
        # cancellation error near distance 0 far below the 1e-4 that batched and single results may differ by.
        queries = np.asarray(queries, dtype=np.float64)
        references = self.embeddings.astype(np.float64)
        squared: np.ndarray = (
            (queries**2).sum(axis=1, keepdims=True)
            + (references**2).sum(axis=1)[None, :]
            - 2.0 * queries @ references.T
        )
        return squared

    def save(self, path: str | Path) -> None:
        """Atomic write of our format (write a temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": FORMAT_TAG,
            "version": FORMAT_VERSION,
            "names": list(self.names),
            "embeddings": torch.from_numpy(np.ascontiguousarray(self.embeddings, dtype=np.float32)),
            "meta": asdict(self.meta),
        }
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                torch.save(payload, out)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        log.info("gallery_saved", extra={"path": str(path), "entries": len(self.names)})


def load_gallery(path: str | Path, settings: Settings | None = None) -> Gallery:
    """Read a gallery file in our format or the course's (see `course_gallery_made_with`)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise GalleryError(f"cannot read gallery {path}: {exc}") from exc
    gallery = parse_gallery(data, settings or get_settings(), source=str(path))
    log.info("gallery_loaded", extra={"path": str(path), "entries": len(gallery), "format": gallery.meta.source})
    return gallery


def parse_gallery(data: bytes, settings: Settings, source: str = "<bytes>") -> Gallery:
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a file that is not its format
        raise GalleryError(f"{source} is not a gallery file: {exc}") from exc
    if isinstance(loaded, dict) and loaded.get("format") == FORMAT_TAG:
        return _from_ours(loaded, source)
    if _looks_like_course_format(loaded):
        return _from_course(loaded, settings, source)
    raise GalleryError(f"{source} is neither a facerec gallery nor a course data.pt")


def _from_ours(loaded: dict[str, Any], source: str) -> Gallery:
    if loaded.get("version") != FORMAT_VERSION:
        raise GalleryError(f"{source}: gallery format version {loaded.get('version')!r} is not {FORMAT_VERSION}")
    try:
        meta = GalleryMeta(**loaded["meta"])
        embeddings = loaded["embeddings"].to(torch.float32).numpy()
        return Gallery([str(name) for name in loaded["names"]], embeddings, meta)
    except (KeyError, TypeError, AttributeError) as exc:
        raise GalleryError(f"{source}: malformed gallery: {exc}") from exc


def _looks_like_course_format(loaded: Any) -> bool:
    return (
        isinstance(loaded, list | tuple)
        and len(loaded) == 2
        and isinstance(loaded[0], list | tuple)
        and isinstance(loaded[1], list | tuple)
        and len(loaded[0]) == len(loaded[1])
        and all(isinstance(vector, torch.Tensor) for vector in loaded[0])
    )


def _from_course(loaded: Sequence[Any], settings: Settings, source: str) -> Gallery:
    if settings.course_gallery_made_with is None:
        raise GalleryMismatch(
            f"{source} is a course-format data.pt with no record of the model that made it; state it with "
            "--course-gallery WEIGHTS:CROP:MARGIN (FACEREC_COURSE_GALLERY_MADE_WITH), e.g. vggface2:240:0"
        )
    weights, crop_size, margin = settings.course_gallery_made_with.rsplit(":", 2)
    meta = GalleryMeta(weights=weights, crop_size=int(crop_size), margin=int(margin), created=0.0, source="course")
    vectors, names = loaded
    if not vectors:
        return Gallery.empty(meta)
    embeddings = torch.cat([vector.reshape(1, -1) for vector in vectors]).to(torch.float32).numpy()
    return Gallery([str(name) for name in names], unit(embeddings), meta)
