"""The distances that decide answers: beyond `recognition` a face is `Unknown` (face to a person's mean
embedding), beyond `verification` two photos show different people (face to face: such distances run larger).

Calibrated per weights id on data the project has (see docs/benchmarks.md, `facerec bench accuracy`)."""

from __future__ import annotations

from dataclasses import dataclass

from facerec.settings import Settings


@dataclass(frozen=True, slots=True)
class Thresholds:
    recognition: float
    verification: float


# Provisional values from the model's measured distance distributions on LFW-style photos (right person mostly
# 0.5-0.85, nearest stranger mostly 0.9-1.3); `facerec bench accuracy` calibrates them.
CALIBRATED: dict[str, Thresholds] = {"casia-webface": Thresholds(recognition=0.9, verification=1.1)}


def recognition_threshold(settings: Settings, weights: str) -> float | None:
    """The distance beyond which a face is `Unknown` for a gallery made with `weights`; None: never Unknown."""
    return settings.unknown_threshold


def verification_threshold(settings: Settings, weights: str) -> float:
    """The face-to-face distance beyond which two photos show different people."""
    known = CALIBRATED.get(weights)
    if known is None:
        raise ValueError(f"no calibrated verification threshold for weights {weights!r}")
    return known.verification
