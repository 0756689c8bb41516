"""A gallery record that cannot be parsed (e.g. left empty by a power cut before the store was durable) is not
cached as invalid for ever: once it is rewritten under the same key, workers use it."""

from __future__ import annotations

from facerec import people
from facerec.adapters.memory import MemoryBlobStore
from facerec.worker.gallery_sync import GallerySync
from tests.colour_model import ColourModel

ADA = "Ada Lovelace"


async def test_an_empty_record_is_read_again_once_it_is_rewritten() -> None:
    store = MemoryBlobStore("gallery")
    model = ColourModel()
    sync = GallerySync(store, model, 60)
    photo_id = "e" * 32
    record = people.EmbeddingRecord.from_vector(
        [0.8, 0.1, 0.1], person=ADA, photo_id=photo_id, **model.embedding_fields()
    )
    await people.save_enrollment(store, ADA, photo_id, b"jpeg", ".jpg", record)
    key = people.embedding_key(ADA, photo_id)
    await store.put(key, b"")  # what a crash could leave of it
    await sync.refresh()
    assert model.people == {}
    await store.put(key, record.model_dump_json().encode())
    await sync.refresh()
    assert set(model.people) == {ADA}
