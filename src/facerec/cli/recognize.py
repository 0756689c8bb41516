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
@click.option("--gallery", "gallery_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the full results as a JSON list.")
@model_options
def recognize(images: tuple[Path, ...], gallery_path: Path | None, as_json: bool, **options: Any) -> None:
    """Recognize the face in each IMAGE against a gallery (default: FACEREC_GALLERY)."""
    from facerec.recognition.gallery import GalleryError, load_gallery
    from facerec.recognition.recognizer import Recognizer
    from facerec.recognition.results import ImageRejected

    settings = settings_from_options(options)
    path = gallery_path or (Path(settings.gallery) if settings.gallery else None)
    if path is None:
        raise click.UsageError("no gallery: pass --gallery FILE (make one with `facerec enroll`)")
    try:
        recognizer = Recognizer(settings, load_gallery(path, settings))
    except GalleryError as exc:
        raise click.ClickException(str(exc)) from exc
    records: list[dict[str, Any]] = []
    for start in range(0, len(images), settings.batch_max):
        chunk = images[start : start + settings.batch_max]
        outcomes = recognizer.recognize([image.read_bytes() for image in chunk])
        for image, outcome in zip(chunk, outcomes, strict=True):
            record = {"file": str(image), "stem": image.stem, **asdict(outcome)}
            if isinstance(outcome, ImageRejected):
                record["name"] = f"error:{outcome.code}"
            records.append(record)
            if not as_json:
                click.echo(f"{image.stem}:{record['name']}")
    if as_json:
        click.echo(json.dumps(records, indent=2))
