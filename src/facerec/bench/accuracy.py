"""`facerec bench accuracy`: open-set identification and 1:1 verification on lfw_small, with and without flip TTA,
by the protocol in `facerec.recognition.calibration` (calibrate on one half of the identities, measure on the
other)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import numpy as np

from facerec.bench.options import datasets_option, json_option
from facerec.recognition.calibration import (
    ENROLL_PHOTOS,
    RULE,
    analyse,
    evaluate,
    lfw_identities,
    split_halves,
    unit,
)
from facerec.settings import Settings

TABLE_STEP = 0.05
EMBED_COST_FACES = 32
EMBED_COST_ROUNDS = 3


def curve_table(result: Mapping[str, Any]) -> list[str]:
    """Compact text table of both calibration curves (every TABLE_STEP and the chosen thresholds)."""
    chosen = result["chosen"]
    recognition = result["calibration"]["recognition"]["curve"]
    verification = result["calibration"]["verification"]["curve"]
    lines = ["threshold | recog FAR  FRR  errors | verif FAR  FRR  errors"]
    for rec, ver in zip(recognition, verification, strict=True):
        t = rec["threshold"]
        marks = ("R" if t == chosen["recognition"] else "") + ("V" if t == chosen["verification"] else "")
        if abs(t / TABLE_STEP - round(t / TABLE_STEP)) > 1e-6 and not marks:
            continue
        lines.append(
            f"{t:9.2f} | {rec['far']:9.3f} {rec['frr']:5.3f} {rec['errors']:6.0f} |"
            f" {ver['far']:9.3f} {ver['frr']:5.3f} {ver['errors']:6.0f} {marks}"
        )
    return lines


def embed_dataset(
    recognizer: Any, photos: Mapping[str, Sequence[Path]]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """(plain, TTA) identity -> [photos with a face, 512], which of them are enrollable, and timings. Each photo
    is detected once."""
    import torch

    from facerec.recognition.images import decode_image

    files = [(name, path) for name in sorted(photos) for path in photos[name]]
    images = [decode_image(path.read_bytes(), recognizer.settings.max_image_pixels) for _, path in files]
    started = time.perf_counter()
    faces = recognizer.detector.detect(images)
    detect_s = time.perf_counter() - started
    found = [(name, face) for (name, _), face in zip(files, faces, strict=True) if face is not None]
    crops = torch.stack([face.crop for _, face in found])
    started = time.perf_counter()
    plain = recognizer.embed_crops(crops)
    plain_s = time.perf_counter() - started
    started = time.perf_counter()
    mirrored = recognizer.embed_crops(torch.flip(crops, dims=[3]))
    tta_s = plain_s + time.perf_counter() - started
    tta = unit(plain.astype(np.float64) + mirrored)
    by_plain: dict[str, list[np.ndarray]] = {}
    by_tta: dict[str, list[np.ndarray]] = {}
    single: dict[str, list[bool]] = {}
    for (name, face), p, t in zip(found, plain, tta, strict=True):
        by_plain.setdefault(name, []).append(p)
        by_tta.setdefault(name, []).append(t)
        single.setdefault(name, []).append(face.faces == 1)
    timing = {
        "photos": len(files),
        "faces": len(found),
        "no_face": [str(path) for (_, path), face in zip(files, faces, strict=True) if face is None],
        "several_faces": [str(path) for (_, path), face in zip(files, faces, strict=True) if face and face.faces > 1],
        "detect_s": round(detect_s, 2),
        "embed_s": round(plain_s, 2),
        "embed_tta_s": round(tta_s, 2),
        "faces_per_s": round(len(found) / (detect_s + plain_s), 2),
        "faces_per_s_tta": round(len(found) / (detect_s + tta_s), 2),
        "embed_faces_per_s": round(len(found) / plain_s, 2),
        "embed_faces_per_s_tta": round(len(found) / tta_s, 2),
    }
    timing["embed_rounds"] = embedding_cost(recognizer, crops[:EMBED_COST_FACES])
    stacked = ({n: np.stack(v) for n, v in by.items()} for by in (by_plain, by_tta))
    enrollable = {name: np.asarray(flags, dtype=bool) for name, flags in single.items()}
    return next(stacked), next(stacked), enrollable, timing


def embedding_cost(recognizer: Any, crops: Any) -> dict[str, Any]:
    """Faces/s of `embed_crops` as the recognizer runs it, without and with FACEREC_FLIP_TTA (median of rounds)."""
    from facerec.bench.model import median_rate

    plain = median_rate(len(crops), lambda: recognizer.embed_crops(crops), EMBED_COST_ROUNDS)
    recognizer.settings = recognizer.settings.model_copy(update={"flip_tta": True})
    try:
        tta = median_rate(len(crops), lambda: recognizer.embed_crops(crops), EMBED_COST_ROUNDS)
    finally:
        recognizer.settings = recognizer.settings.model_copy(update={"flip_tta": False})
    return {
        "faces": len(crops),
        "rounds": EMBED_COST_ROUNDS,
        "faces_per_s": round(plain, 2),
        "faces_per_s_tta": round(tta, 2),
        "tta_cost": round(plain / tta, 2),
    }


def versus_fp32(
    settings: Settings,
    identities: Mapping[str, Sequence[Path]],
    plain: Mapping[str, np.ndarray],
    held_out_names: Sequence[str],
    enrollable: Mapping[str, np.ndarray],
    shipped: Any,
) -> dict[str, Any]:
    """For a non-fp32 variant: its embeddings' distance to fp32's (same photos), the held-out figures of fp32 at
    the shipped thresholds, and of a gallery enrolled by fp32 probed by this variant (an fp32 gallery kept)."""
    from facerec.recognition.compiled import distance_summary
    from facerec.recognition.recognizer import Recognizer

    fp32 = Recognizer(settings.model_copy(update={"embedding_variant": "fp32"}), threshold_needed=False)
    reference = embed_dataset(fp32, identities)[0]
    gaps = np.concatenate([np.linalg.norm(plain[name] - reference[name], axis=1) for name in plain])
    held = [name for name in held_out_names if name in plain]
    mixed = {name: np.concatenate([reference[name][:ENROLL_PHOTOS], plain[name][ENROLL_PHOTOS:]]) for name in held}
    result = {
        "distance": {**distance_summary(gaps), "faces": len(gaps)},
        "fp32_at_shipped": evaluate(
            {n: reference[n] for n in held}, shipped.recognition, shipped.verification, enrollable
        ),
        "fp32_gallery_probed_at_shipped": evaluate(mixed, shipped.recognition, shipped.verification, enrollable),
    }
    for label in ("fp32_at_shipped", "fp32_gallery_probed_at_shipped"):
        figures = result[label]
        click.echo(
            f"{label}: named correctly {figures['recognition']['named_correctly']:.2%} (nearest right "
            f"{figures['recognition']['nearest_is_right']:.2%}), strangers Unknown "
            f"{figures['recognition']['strangers_unknown']:.2%}, verification accuracy "
            f"{figures['verification']['accuracy']:.2%}"
        )
    click.echo(f"distance to fp32: {result['distance']}")
    return result


@click.command()
@json_option(Path("bench-results/accuracy.json"))
@datasets_option("Folder holding lfw_small/ (one sub-folder of photos per identity).")
def command(json_path: Path, datasets: Path) -> None:
    """Calibrate the Unknown and verification thresholds on half of lfw_small and measure them on the other half,
    with and without flip test-time augmentation."""
    from facerec.recognition.recognizer import Recognizer
    from facerec.recognition.thresholds import CALIBRATED

    settings = Settings(flip_tta=False, unknown_threshold="none")
    recognizer = Recognizer(settings)
    recognizer.warm_up()
    identities = lfw_identities(datasets / "lfw_small")
    calibration_names, held_out_names = split_halves(list(identities))
    plain, tta, enrollable, timing = embed_dataset(recognizer, identities)
    results: dict[str, Any] = {
        "weights": recognizer.model_id,
        "embedding_variant": recognizer.variant,
        "dataset": "lfw_small",
        "identities": {"calibration": len(calibration_names), "held_out": len(held_out_names)},
        "rule": RULE,
        "enroll_photos": ENROLL_PHOTOS,
        "timing": timing,
    }
    for label, people in (("plain", plain), ("flip_tta", tta)):
        calibration = {name: people[name] for name in calibration_names if name in people}
        held_out = {name: people[name] for name in held_out_names if name in people}
        results[label] = analyse(calibration, held_out, enrollable)
        if label == "flip_tta":
            # A gallery made with TTA answering probes embedded without it (or the reverse): does it matter?
            mixed = {
                name: np.concatenate([tta[name][:ENROLL_PHOTOS], plain[name][ENROLL_PHOTOS:]]) for name in held_out
            }
            chosen = results["plain"]["chosen"]
            results["tta_gallery_plain_probes"] = evaluate(
                mixed, chosen["recognition"], chosen["verification"], enrollable
            )
        click.echo(f"== {label}: calibration curves ({RULE}; R/V: chosen)")
        for line in curve_table(results[label]):
            click.echo(line)
        held = results[label]["held_out"]
        recognition, verification = held["recognition"], held["verification"]
        click.echo(
            f"chosen: recognition {results[label]['chosen']['recognition']}, verification "
            f"{results[label]['chosen']['verification']}; held out: named correctly "
            f"{recognition['named_correctly']:.1%}, strangers Unknown {recognition['strangers_unknown']:.1%}, "
            f"verification accuracy {verification['accuracy']:.1%}"
        )
    rounds = timing["embed_rounds"]
    click.echo(
        f"speed (detect+embed, one pass): {timing['faces_per_s']} faces/s plain, {timing['faces_per_s_tta']} with "
        f"flip TTA; embedding alone (median of {rounds['rounds']}): {rounds['faces_per_s']} vs "
        f"{rounds['faces_per_s_tta']} faces/s ({rounds['tta_cost']}x the time)"
    )
    shipped = CALIBRATED.get(recognizer.model_id)
    chosen = results["plain"]["chosen"]
    results["shipped"] = None if shipped is None else asdict(shipped)
    if shipped is not None:
        # What a deployment answers: the held-out half at the shipped thresholds (a pipeline change is judged
        # here, whatever thresholds its own calibration would choose).
        held_out = {name: plain[name] for name in held_out_names if name in plain}
        at_shipped = evaluate(held_out, shipped.recognition, shipped.verification, enrollable)
        results["plain"]["held_out_at_shipped"] = at_shipped
        click.echo(
            f"held out at the shipped {shipped.recognition}/{shipped.verification}: named correctly "
            f"{at_shipped['recognition']['named_correctly']:.1%} (nearest right "
            f"{at_shipped['recognition']['nearest_is_right']:.1%}), strangers Unknown "
            f"{at_shipped['recognition']['strangers_unknown']:.1%}, verification accuracy "
            f"{at_shipped['verification']['accuracy']:.1%}"
        )
    if recognizer.variant != "fp32" and shipped is not None:
        results["vs_fp32"] = versus_fp32(settings, identities, plain, held_out_names, enrollable, shipped)
    if shipped is None or asdict(shipped) != chosen:
        click.echo(f"note: thresholds.CALIBRATED holds {shipped} for {recognizer.model_id}, not these", err=True)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    click.echo(f"written to {json_path}", err=True)
