"""The enrollment-consistency primitives of `facerec.people` on every BlobStore adapter (memory, local, S3 on
moto): generations, deletes that bump them, the worker's write-then-verify and the web tier's discard."""

from __future__ import annotations

import time

from facerec import people
from facerec.ports import BlobStore

NAME = "Zoë Saldaña"


def record(photo_id: str, generation: str | None) -> people.EmbeddingRecord:
    return people.EmbeddingRecord.from_vector(
        [0.5, 0.5],
        person=NAME,
        photo_id=photo_id,
        weights="w",
        crop_size=160,
        margin=14,
        normalisation="n",
        generation=generation,
    )


async def test_delete_bumps_the_generation_and_a_late_write_of_the_old_one_is_undone(blob_store: BlobStore) -> None:
    assert await people.current_generation(blob_store, NAME) is None
    assert await people.forget_person(blob_store, NAME) == 0  # nobody to delete: nothing changes
    assert await people.current_generation(blob_store, NAME) is None

    kept, late = "1" * 32, "2" * 32
    await people.save_enrollment(blob_store, NAME, kept, b"jpeg", ".jpg", record(kept, None))
    late_photo = people.photo_key(NAME, late, ".jpg")
    await blob_store.put(late_photo, b"jpeg")  # an enrollment in flight: photo stored, record not yet
    assert await people.forget_person(blob_store, NAME) == 3
    first = await people.current_generation(blob_store, NAME)
    assert first is not None
    assert await people.current_generations(blob_store) == {NAME: first}

    # The in-flight enrollment's worker writes now, for the generation it was sent with: not kept.
    assert (
        await people.commit_enrollment(
            blob_store, late_photo, people.embedding_key(NAME, late), record(late, None), time.time() + 60
        )
        == people.PERSON_DELETED
    )
    assert await blob_store.list(people.EMBEDDINGS) == []

    # A second delete supersedes the first generation; only the newest marker is left.
    await people.save_enrollment(blob_store, NAME, kept, b"jpeg", ".jpg", record(kept, first))
    assert await people.forget_person(blob_store, NAME) == 2
    second = await people.current_generation(blob_store, NAME)
    assert second is not None and second > first
    assert await blob_store.list(people.GENERATIONS) == [people.generation_prefix(NAME) + second]


async def test_commit_keeps_a_valid_record_and_discard_removes_photo_and_record(blob_store: BlobStore) -> None:
    photo_id = "3" * 32
    photo_key, record_key = people.photo_key(NAME, photo_id, ".jpg"), people.embedding_key(NAME, photo_id)
    await blob_store.put(photo_key, b"jpeg")
    assert await people.commit_enrollment(blob_store, photo_key, record_key, record(photo_id, None), None) is None
    assert await people.enrolled_people(blob_store) == {NAME: 1}
    await people.discard_enrollment(blob_store, photo_key, record_key)
    await people.discard_enrollment(blob_store, photo_key, record_key)  # idempotent
    assert await blob_store.list() == []
