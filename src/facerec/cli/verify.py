"""`facerec verify IMG1 IMG2` or `facerec verify --pairs FILE.csv`: do two photos show the same person?"""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any

import click

from facerec.cli.model_options import model_options, settings_from_options


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """The CSV's `img1,img2` cells as written (other columns ignored)."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"img1", "img2"} <= set(reader.fieldnames):
            raise click.BadParameter(f"{path} needs a header with columns img1,img2", param_hint="--pairs")
        return [(row["img1"] or "", row["img2"] or "") for row in reader]


@click.command()
@click.argument("images", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--pairs",
    "pairs_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV with header img1,img2 (paths relative to the CSV's folder): writes img1,img2,same,distance to stdout.",
)
@model_options
def verify(images: tuple[Path, ...], pairs_path: Path | None, **options: Any) -> None:
    """Tell whether IMG1 and IMG2 show the same person: prints `same <distance>` or `different <distance>`.

    The distance is between the two faces' embeddings; beyond the calibrated verification threshold of the
    weights (see docs/benchmarks.md) they are different people. A photo without a face, or unreadable, is
    reported on stderr with exit status 1. With --pairs, a pair with such a photo gets empty `same` and
    `distance`; each distinct photo is embedded once, in batches of FACEREC_BATCH_MAX.
    """
    if (pairs_path is None) == (len(images) == 0):
        raise click.UsageError("give either IMG1 IMG2 or --pairs FILE.csv")
    if pairs_path is None and len(images) != 2:
        raise click.UsageError(f"expected two images, got {len(images)}")
    import numpy as np
    from tqdm import tqdm

    from facerec.recognition.recognizer import Recognizer
    from facerec.recognition.results import ImageRejected
    from facerec.recognition.thresholds import ThresholdUnavailable, verification_threshold

    settings = settings_from_options(options)
    raw = read_pairs(pairs_path) if pairs_path is not None else []
    # Relative paths in the CSV are relative to its folder, wherever the command runs.
    pairs = [(pairs_path.parent / a, pairs_path.parent / b) for a, b in raw] if pairs_path else [tuple(images)]
    recognizer = Recognizer(settings, threshold_needed=False)  # two photos compared, no gallery
    try:
        threshold = verification_threshold(settings, recognizer.model_id)
    except ThresholdUnavailable as exc:
        raise click.ClickException(str(exc)) from None

    distinct = list(dict.fromkeys(path for pair in pairs for path in pair))
    vectors: dict[Path, np.ndarray] = {}
    problems: dict[Path, str] = {}
    with tqdm(total=len(distinct), unit="image", disable=pairs_path is None, file=sys.stderr) as progress:
        for start in range(0, len(distinct), settings.batch_max):
            chunk = distinct[start : start + settings.batch_max]
            data: list[bytes] = []
            readable: list[Path] = []
            for path in chunk:
                try:
                    data.append(path.read_bytes())
                    readable.append(path)
                except OSError as exc:
                    problems[path] = f"cannot read: {exc.strerror or exc}"
            for path, outcome in zip(readable, recognizer.embed(data), strict=True):
                if isinstance(outcome, ImageRejected):
                    problems[path] = f"{outcome.code}: {outcome.message}"
                elif isinstance(outcome, np.ndarray):
                    vectors[path] = outcome
                else:
                    problems[path] = "no face found"
            progress.update(len(chunk))

    if pairs_path is None:
        for path in images:
            if path in problems:
                click.echo(f"error {path}: {problems[path]}", err=True)
        if problems:
            raise SystemExit(1)
        distance = _distance(vectors[images[0]], vectors[images[1]])
        click.echo(f"{'same' if distance <= threshold else 'different'} {distance:.4f}")
        return

    for path in sorted(problems, key=str):
        click.echo(f"error {path}: {problems[path]}", err=True)
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["img1", "img2", "same", "distance"])
    for (first, second), (shown1, shown2) in zip(pairs, raw, strict=True):
        if first in vectors and second in vectors:
            distance = _distance(vectors[first], vectors[second])
            out.writerow([shown1, shown2, int(distance <= threshold), f"{distance:.4f}"])
        else:
            out.writerow([shown1, shown2, "", ""])


def _distance(first: Any, second: Any) -> float:
    import numpy as np

    difference = np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64)
    return float(np.linalg.norm(difference))
