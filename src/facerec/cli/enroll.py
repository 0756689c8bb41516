"""`facerec enroll DIR --gallery FILE`: build a gallery from one folder of photos per person."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click
from tqdm import tqdm

from facerec.cli.model_options import model_options, settings_from_options
from facerec.cli.text import plural
from facerec.recognition.results import NOT_ONE_FACE, Enrollment, ImageRejected
from facerec.settings import Settings
from facerec.validation import InvalidPersonName, person_name

log = logging.getLogger(__name__)


def person_photos(directory: Path, per_person: int | None) -> dict[str, list[Path]]:
    """Person (folder name, in the canonical form the API uses) -> their photo files, sorted, at most
    `per_person` of them. A folder whose name is not a valid person name is skipped with a message."""
    people: dict[str, list[Path]] = {}
    for folder in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            name = person_name(folder.name)
        except InvalidPersonName as exc:
            click.echo(f"skipped folder {folder.name!r}: not a valid person name: {exc}", err=True)
            continue
        photos = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        photos = sorted([*people.get(name, []), *photos])
        people[name] = photos[:per_person] if per_person else photos
    return people


def usable_photos(
    recognizer: Any, settings: Settings, jobs: list[tuple[str, Path]]
) -> list[tuple[str, Path, Enrollment]]:
    """The photos with exactly one face, embedded; every other photo is reported on stderr with the reason.

    The rule is `Recognizer.enroll`'s, the same one a worker applies to photos uploaded through the API, so a
    photo the API refuses is refused here too (a group photo would otherwise enroll whichever face was largest).
    """
    usable: list[tuple[str, Path, Enrollment]] = []
    batch = settings.batch_max
    with tqdm(total=len(jobs), unit="photo", desc="enroll") as progress:
        for start in range(0, len(jobs), batch):
            chunk = jobs[start : start + batch]
            outcomes = recognizer.enroll([path.read_bytes() for _, path in chunk])
            for (name, path), outcome in zip(chunk, outcomes, strict=True):
                if isinstance(outcome, Enrollment):
                    usable.append((name, path, outcome))
                else:
                    click.echo(f"skipped {path}: {skip_reason(outcome)}", err=True)
            progress.update(len(chunk))
    return usable


def skip_reason(outcome: ImageRejected) -> str:
    """`2 faces found; enroll needs exactly one`, `no face found in the photo`, `not_an_image: ...`."""
    return outcome.message if outcome.code == NOT_ONE_FACE else f"{outcome.code}: {outcome.message}"


def summary(people: int, photos: int, skipped: int, into: str) -> str:
    return (
        f"enrolled {plural(people, 'person', 'people')} from {plural(photos, 'photo')} into {into} ({skipped} skipped)"
    )


@click.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--gallery", "gallery_path", type=click.Path(dir_okay=False, path_type=Path), help="Gallery file.")
@click.option(
    "--store",
    "to_store",
    is_flag=True,
    help="Enroll into the data tier's gallery store instead (what the API and every worker use).",
)
@click.option("--backend", type=click.Choice(["local", "aws"]), help="With --store: the data tier (default: local).")
@click.option("--prefix", help="With --store: the deployment's resource name prefix (buckets, queues).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="With --store: local data dir.")
@click.option("--per-person", type=click.IntRange(min=1), help="Use at most N photos of each person (sorted).")
@click.option(
    "--recognizer-factory",
    hidden=True,
    envvar="FACEREC_WORKER_RECOGNIZER_FACTORY",
    help="module:callable building the recognizer (tests of a deployment without the model).",
)
@model_options
def enroll(
    directory: Path,
    gallery_path: Path | None,
    to_store: bool,
    per_person: int | None,
    recognizer_factory: str | None,
    **options: Any,
) -> None:
    """Enroll DIRECTORY (one sub-folder of photos per person, named after them) into a gallery file, or with
    --store into the running service's gallery store.

    Only photos with exactly one face are used (the API's rule); every other photo is listed on stderr with
    the reason, never silently skipped.
    """
    import numpy as np

    if (gallery_path is None) == (not to_store):
        raise click.UsageError("give either --gallery FILE or --store")
    deployment = [f"--{key.replace('_', '-')}" for key in ("backend", "prefix", "data_dir") if options[key]]
    if deployment and not to_store:
        raise click.UsageError(f"{', '.join(deployment)} name the store: use them with --store")
    settings = settings_from_options(options)
    people = person_photos(directory, per_person)
    if not people:
        raise click.UsageError(f"{directory} has no sub-folders (one per person expected)")
    if recognizer_factory:
        from facerec.worker.service import import_factory

        recognizer: Any = import_factory(recognizer_factory)(settings)
    else:
        from facerec.recognition.recognizer import Recognizer

        recognizer = Recognizer(settings, threshold_needed=False)
    if to_store:
        enroll_into_store(recognizer, settings, people)
        return
    jobs = [(name, path) for name, photos in people.items() for path in photos]
    usable = usable_photos(recognizer, settings, jobs)
    embeddings: dict[str, list[Any]] = {name: [] for name in people}
    for name, _, outcome in usable:
        embeddings[name].append(np.asarray(outcome.vector, dtype=np.float32))
    for name in sorted(name for name, vectors in embeddings.items() if not vectors):
        click.echo(f"not enrolled {name}: no usable photo", err=True)
    from facerec.recognition.gallery import Gallery

    gallery = Gallery.from_people(embeddings, recognizer.gallery_meta())
    if len(gallery) == 0:
        raise click.ClickException("no photo with exactly one face; gallery not written")
    assert gallery_path is not None
    gallery.save(gallery_path)
    click.echo(summary(len(gallery), len(usable), len(jobs) - len(usable), str(gallery_path)))


def enroll_into_store(recognizer: Any, settings: Settings, people: dict[str, list[Path]]) -> None:
    """Embed each photo with exactly one face and write it to the data tier's gallery store."""
    import asyncio

    from facerec import keys
    from facerec.backend import open_gallery_store
    from facerec.people import EmbeddingRecord, current_generation, save_enrollment
    from facerec.ports import PortError

    jobs = [(name, path) for name, photos in people.items() for path in photos]
    fields = recognizer.embedding_fields()
    enrolled = usable_photos(recognizer, settings, jobs)

    async def write() -> None:
        async with open_gallery_store(settings) as gallery:
            generations = {name: await current_generation(gallery, name) for name in people}
            for name, path, outcome in enrolled:
                photo_id = keys.new_request_id()
                record = EmbeddingRecord.from_vector(
                    outcome.vector, person=name, photo_id=photo_id, generation=generations[name], **fields
                )
                await save_enrollment(gallery, name, photo_id, path.read_bytes(), path.suffix.lower(), record)

    try:
        asyncio.run(write())
    except PortError as exc:
        raise click.ClickException(
            f"cannot write to the gallery store {settings.gallery_bucket} ({exc}); on aws create it with "
            f"`facerec aws provision --prefix {settings.prefix}`"
        ) from None
    names = {name for name, _, _ in enrolled}
    where = settings.gallery_bucket if settings.backend == "aws" else str(settings.data_dir)
    into = f"the gallery store ({settings.backend}: {where})"
    click.echo(summary(len(names), len(enrolled), len(jobs) - len(enrolled), into))
