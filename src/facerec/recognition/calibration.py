"""The evaluation protocol behind the shipped thresholds (`facerec.recognition.thresholds`), shared by
`facerec bench accuracy` and the accuracy tests.

The identities (sorted by name) are split by index parity: even ones calibrate, odd ones are held out. In each
half, identities alternate between enrolled (the first 3 photos make the gallery entry, less any that shows
several faces, as `facerec enroll` does; the others are probes)
and strangers (never enrolled; all their photos are probes), and then swap roles, so every identity serves as
both. Verification uses all genuine pairs of a half and as many impostor pairs drawn with a fixed seed.

A threshold is chosen on the calibration half by RULE (the lowest FAR + FRR, so that strangers and enrolled
people weigh the same however many probes each has; the middle of a tie) and measured on the held-out half.
Each photo is detected once and embedded twice (as it is and mirrored): the TTA embedding is the unit mean of
the two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ENROLL_PHOTOS = 3
RULE = "lowest FAR + FRR (balanced error rate); the middle of a tie"
GRID = [round(0.40 + 0.01 * step, 2) for step in range(121)]  # 0.40 .. 1.60
IMPOSTOR_SEED = 0


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    scaled: np.ndarray = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
    return scaled


def lfw_identities(root: Path) -> dict[str, list[Path]]:
    """Identity -> its photos, both sorted by name."""
    return {
        person.name: sorted(p for p in person.iterdir() if p.is_file())
        for person in sorted(root.iterdir())
        if person.is_dir()
    }


def split_halves(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(calibration, held-out): identities at even / odd index in sorted order."""
    ordered = sorted(names)
    return ordered[0::2], ordered[1::2]


@dataclass(frozen=True)
class RecognitionTrials:
    genuine: np.ndarray
    """Distance from each enrolled person's probe photo to the nearest gallery entry."""
    genuine_right: np.ndarray
    """Whether that nearest entry is the right person."""
    stranger: np.ndarray
    """Distance from each stranger's photo to the nearest gallery entry."""


Enrollable = Mapping[str, np.ndarray]
"""identity -> [photos] bool: the photo shows exactly one face (enrollment's rule; None: every photo)."""


def gallery_photos(people: Mapping[str, np.ndarray], name: str, enrollable: Enrollable | None) -> np.ndarray:
    """What `facerec enroll --per-person 3` keeps: the first 3 photos, less those without exactly one face."""
    first = people[name][:ENROLL_PHOTOS]
    return first if enrollable is None else first[enrollable[name][:ENROLL_PHOTOS]]


def recognition_trials(people: Mapping[str, np.ndarray], enrollable: Enrollable | None = None) -> RecognitionTrials:
    """people: identity -> [photos, 512] unit embeddings in photo order (of one half)."""
    names = sorted(people)
    genuine: list[float] = []
    right: list[bool] = []
    stranger: list[float] = []
    for fold in (0, 1):
        enrolled = [name for index, name in enumerate(names) if index % 2 == fold]
        strangers = [name for index, name in enumerate(names) if index % 2 != fold]
        usable = [
            name
            for name in enrolled
            if len(people[name]) > ENROLL_PHOTOS and len(gallery_photos(people, name, enrollable))
        ]
        gallery = unit(np.stack([unit(gallery_photos(people, name, enrollable)).mean(axis=0) for name in usable]))
        for index, name in enumerate(usable):
            distances = np.linalg.norm(unit(people[name][ENROLL_PHOTOS:])[:, None, :] - gallery[None], axis=-1)
            genuine.extend(distances.min(axis=1))
            right.extend(distances.argmin(axis=1) == index)
        for name in strangers:
            distances = np.linalg.norm(unit(people[name])[:, None, :] - gallery[None], axis=-1)
            stranger.extend(distances.min(axis=1))
    return RecognitionTrials(np.asarray(genuine), np.asarray(right, dtype=bool), np.asarray(stranger))


def verification_pairs(people: Mapping[str, int]) -> tuple[list[tuple[Any, Any]], list[tuple[Any, Any]]]:
    """(genuine, impostor) pairs of (identity, photo index): all genuine pairs, as many impostors (fixed seed)."""
    names = sorted(people)
    genuine = [((n, i), (n, j)) for n in names for i in range(people[n]) for j in range(i + 1, people[n])]
    impostors = [
        ((a, i), (b, j))
        for x, a in enumerate(names)
        for b in names[x + 1 :]
        for i in range(people[a])
        for j in range(people[b])
    ]
    chosen = np.random.default_rng(IMPOSTOR_SEED).choice(len(impostors), size=len(genuine), replace=False)
    return genuine, [impostors[k] for k in sorted(chosen)]


def verification_trials(people: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(genuine, impostor) face-to-face distances over `verification_pairs`."""
    genuine_pairs, impostor_pairs = verification_pairs({name: len(vectors) for name, vectors in people.items()})

    def distances(pairs: list[tuple[Any, Any]]) -> np.ndarray:
        return np.asarray(
            [np.linalg.norm(unit(people[a][i]) - unit(people[b][j])) for (a, i), (b, j) in pairs], dtype=np.float64
        )

    return distances(genuine_pairs), distances(impostor_pairs)


def recognition_curve(trials: RecognitionTrials, grid: Sequence[float] = GRID) -> list[dict[str, float]]:
    """Per threshold: FAR (strangers named), FRR (enrolled probes not named correctly), their error count."""
    rows = []
    for threshold in grid:
        named_right = (trials.genuine <= threshold) & trials.genuine_right
        false_accepts = int((trials.stranger <= threshold).sum())
        false_rejects = int((~named_right).sum())
        rows.append(_row(threshold, false_accepts, len(trials.stranger), false_rejects, len(trials.genuine)))
    return rows


def verification_curve(
    genuine: np.ndarray, impostor: np.ndarray, grid: Sequence[float] = GRID
) -> list[dict[str, float]]:
    rows = []
    for threshold in grid:
        false_accepts = int((impostor <= threshold).sum())
        false_rejects = int((genuine > threshold).sum())
        rows.append(_row(threshold, false_accepts, len(impostor), false_rejects, len(genuine)))
    return rows


def _row(threshold: float, false_accepts: int, negatives: int, false_rejects: int, positives: int) -> dict[str, float]:
    return {
        "threshold": threshold,
        "far": round(false_accepts / max(1, negatives), 4),
        "frr": round(false_rejects / max(1, positives), 4),
        "errors": false_accepts + false_rejects,
        "accuracy": round(1 - (false_accepts + false_rejects) / max(1, negatives + positives), 4),
    }


def choose_threshold(curve: Sequence[Mapping[str, float]]) -> float:
    """RULE: the lowest FAR + FRR; the middle of the thresholds that tie."""
    balanced = [round(row["far"] + row["frr"], 4) for row in curve]
    tied = [row["threshold"] for row, error in zip(curve, balanced, strict=True) if error == min(balanced)]
    return round(tied[len(tied) // 2], 2)


def at(curve: Sequence[Mapping[str, float]], threshold: float) -> dict[str, float]:
    """The curve's row for `threshold` (computed on the grid)."""
    return dict(min(curve, key=lambda row: abs(row["threshold"] - threshold)))


def evaluate(
    people: Mapping[str, np.ndarray], recognition: float, verification: float, enrollable: Enrollable | None = None
) -> dict[str, Any]:
    """Held-out figures at given thresholds."""
    trials = recognition_trials(people, enrollable)
    named = (trials.genuine <= recognition) & trials.genuine_right
    genuine, impostor = verification_trials(people)
    correct = int((genuine <= verification).sum() + (impostor > verification).sum())
    return {
        "recognition": {
            "threshold": recognition,
            "enrolled_probes": len(trials.genuine),
            "named_correctly": round(float(named.mean()), 4),
            "nearest_is_right": round(float(trials.genuine_right.mean()), 4),
            "stranger_probes": len(trials.stranger),
            "strangers_unknown": round(float((trials.stranger > recognition).mean()), 4),
        },
        "verification": {
            "threshold": verification,
            "pairs": len(genuine) + len(impostor),
            "accuracy": round(correct / (len(genuine) + len(impostor)), 4),
            "far": round(float((impostor <= verification).mean()), 4),
            "frr": round(float((genuine > verification).mean()), 4),
        },
    }


def distribution(values: np.ndarray) -> dict[str, float]:
    return {
        key: round(float(np.percentile(values, q)), 3)
        for key, q in (("p5", 5), ("p50", 50), ("p95", 95), ("min", 0), ("max", 100))
    }


def analyse(
    calibration: Mapping[str, np.ndarray], held_out: Mapping[str, np.ndarray], enrollable: Enrollable | None = None
) -> dict[str, Any]:
    """Curves and thresholds on the calibration half, figures at those thresholds on the held-out half."""
    trials = recognition_trials(calibration, enrollable)
    recognition = recognition_curve(trials)
    genuine, impostor = verification_trials(calibration)
    verification = verification_curve(genuine, impostor)
    chosen = {"recognition": choose_threshold(recognition), "verification": choose_threshold(verification)}
    return {
        "calibration": {
            "recognition": {
                "enrolled_probes": len(trials.genuine),
                "stranger_probes": len(trials.stranger),
                "right_person": distribution(trials.genuine[trials.genuine_right]),
                "nearest_stranger": distribution(trials.stranger),
                "curve": recognition,
            },
            "verification": {
                "pairs": len(genuine) + len(impostor),
                "genuine": distribution(genuine),
                "impostor": distribution(impostor),
                "curve": verification,
            },
        },
        "chosen": chosen,
        "held_out": evaluate(held_out, chosen["recognition"], chosen["verification"], enrollable),
    }
