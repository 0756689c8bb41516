"""The distances that decide answers: beyond `recognition` a face is `Unknown` (face to a person's mean
embedding), beyond `verification` two photos show different people (face to face: such distances run larger).

Calibrated per weights id on data the project has (see docs/benchmarks.md, `facerec bench accuracy`).
This module must stay importable without torch: `facerec serve` resolves the threshold for its banner.
"""

from __future__ import annotations

from dataclasses import dataclass

from facerec.settings import Settings


@dataclass(frozen=True, slots=True)
class Thresholds:
    recognition: float
    verification: float


# Chosen by `facerec bench accuracy` (docs/benchmarks.md, "Accuracy and thresholds"; docs/bench/accuracy.json) on
# the calibration half of lfw_small (identities at even sorted index), without flip TTA (the default): the
# threshold with the lowest FAR + FRR. Recognition: 3 photos enrolled per person, their other photos vs photos of
# never-enrolled strangers. Verification: all genuine pairs vs as many impostor pairs. The held-out half measures them.
# No vggface2 entry: its weights cannot be obtained offline here, so nothing could be measured; a gallery made
# with them (or with a state_dict file) needs an explicit threshold.
CALIBRATED: dict[str, Thresholds] = {"casia-webface": Thresholds(recognition=0.94, verification=1.04)}


class ThresholdUnavailable(ValueError):
    """No threshold for these weights: none calibrated, none recorded in the gallery, none set."""


def recognition_threshold(settings: Settings, weights: str, recorded: float | None = None) -> float | None:
    """The distance beyond which a face is `Unknown` for a gallery made with `weights`; None: never Unknown.

    `FACEREC_UNKNOWN_THRESHOLD`: a number is used as it is and `none` disables the check (closed set); unset,
    the threshold `recorded` in the gallery's metadata applies, else the calibrated one for `weights`. Raises
    ThresholdUnavailable rather than ever falling back to a closed set silently.
    """
    setting = settings.unknown_threshold
    if setting == "none":
        return None
    if isinstance(setting, float):
        return setting
    if recorded is not None:
        return recorded
    known = CALIBRATED.get(weights)
    if known is None:
        raise ThresholdUnavailable(
            f"no calibrated Unknown threshold for weights {weights!r} (calibrated: {', '.join(sorted(CALIBRATED))}); "
            "set one with FACEREC_UNKNOWN_THRESHOLD=DISTANCE (--unknown-threshold), record one in the gallery by "
            "enrolling with it, or set FACEREC_UNKNOWN_THRESHOLD=none to answer the nearest name for every face"
        )
    return known.recognition


def describe_recognition_threshold(settings: Settings, weights: str, recorded: float | None = None) -> str:
    """One phrase for banners and logs: what makes a face `Unknown`, and where that number comes from."""
    threshold = recognition_threshold(settings, weights, recorded)
    if threshold is None:
        return "closed set: every face is answered with the nearest name (FACEREC_UNKNOWN_THRESHOLD=none)"
    if isinstance(settings.unknown_threshold, float):
        source = "FACEREC_UNKNOWN_THRESHOLD"
    elif recorded is not None:
        source = "recorded in the gallery"
    else:
        source = f"{weights} default"
    return f"answered Unknown beyond distance {threshold:g} ({source}; FACEREC_UNKNOWN_THRESHOLD=none for closed-set)"


def verification_threshold(settings: Settings, weights: str) -> float:
    """The face-to-face distance beyond which two photos show different people."""
    known = CALIBRATED.get(weights)
    if known is None:
        raise ThresholdUnavailable(f"no calibrated verification threshold for weights {weights!r}")
    return known.verification
