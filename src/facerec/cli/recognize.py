"""`facerec recognize --gallery FILE IMG...`: name the person in each photo, `<stem>:<name>` per line."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from facerec.cli.model_options import model_options, settings_from_options


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--gallery",
    "gallery_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Gallery file made by `facerec enroll` (or a course data.pt) [env FACEREC_GALLERY].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the full results as a JSON list.")
@model_options
def recognize(images: tuple[Path, ...], gallery_path: Path | None, as_json: bool, **options: Any) -> None:
    """Recognize the face in each IMAGE against a gallery (default: FACEREC_GALLERY).

    Prints `<stem>:<name>` per image on stdout (`NoFace`, `Unknown` included); an image that cannot be read is
    reported on stderr instead, and the exit status is 1 if any was.
    """
    from facerec.recognition.gallery import GalleryError, load_gallery
    from facerec.recognition.recognizer import Recognizer
    from facerec.recognition.results import ImageRejected
    from facerec.recognition.thresholds import ThresholdUnavailable

    settings = settings_from_options(options)
    path = gallery_path or (Path(settings.gallery) if settings.gallery else None)
    if path is None:
        raise click.UsageError("no gallery: pass --gallery FILE (make one with `facerec enroll`)")
    try:
        recognizer = Recognizer(settings, load_gallery(path, settings))
    except (GalleryError, ThresholdUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    records: list[dict[str, Any]] = []
    failed = 0
    for start in range(0, len(images), settings.batch_max):
        chunk = images[start : start + settings.batch_max]
        outcomes = recognizer.recognize([image.read_bytes() for image in chunk])
        for image, outcome in zip(chunk, outcomes, strict=True):
            if isinstance(outcome, ImageRejected):
                # stderr, not stdout: a `<stem>:<name>` consumer must never read an error as a name.
                failed += 1
                click.echo(f"error {image}: {outcome.code}: {outcome.message}", err=True)
                records.append({"file": str(image), "stem": image.stem, "error": asdict(outcome)})
                continue
            records.append({"file": str(image), "stem": image.stem, **asdict(outcome)})
            if not as_json:
                click.echo(f"{image.stem}:{outcome.name}")
    if as_json:
        click.echo(json.dumps(records, indent=2))
    if failed:
        raise SystemExit(1)
