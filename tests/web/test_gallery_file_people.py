"""People from the `--gallery` file: listed by `GET /v1/people` (read-only), refused by `DELETE` with 409."""

from __future__ import annotations

from pathlib import Path

import pytest

from facerec import people
from facerec.people import EmbeddingRecord
from facerec.testing import jpeg_bytes
from tests.web.harness import running_web

FILE_PEOPLE = ("Amelie_Mauresmo", "Hans_Blix")


@pytest.fixture
def gallery_file(tmp_path: Path) -> Path:
    """A gallery file as `facerec enroll` writes it, holding FILE_PEOPLE (one entry each)."""
    import numpy as np

    from facerec.recognition.gallery import Gallery, GalleryMeta

    vectors = np.eye(len(FILE_PEOPLE), 512, dtype=np.float32)
    path = tmp_path / "gallery.pt"
    Gallery(list(FILE_PEOPLE), vectors, GalleryMeta(weights="w", crop_size=160, margin=14)).save(path)
    return path


async def enroll_directly(store: object, name: str) -> None:
    """An enrolled person as the API leaves them in the gallery store (photo + embedding record)."""
    photo_id = "a" * 32
    record = EmbeddingRecord.from_vector(
        [1.0, 0.0], person=name, photo_id=photo_id, weights="w", crop_size=160, margin=14, normalisation="n"
    )
    await people.save_enrollment(store, name, photo_id, jpeg_bytes(), ".jpg", record)  # type: ignore[arg-type]


async def test_gallery_file_people_are_listed_read_only_next_to_enrolled_people(gallery_file: Path) -> None:
    async with running_web(gallery=str(gallery_file)) as web:
        assert web.data.gallery is not None
        await enroll_directly(web.data.gallery, "Ada Lovelace")
        listed = (await web.client.get("/v1/people")).json()["people"]
    assert listed == [
        {"name": "Ada Lovelace", "photos": 1, "embeddings": 1, "source": "enrolled", "read_only": False},
        {"name": "Amelie_Mauresmo", "photos": None, "embeddings": 1, "source": "gallery-file", "read_only": True},
        {"name": "Hans_Blix", "photos": None, "embeddings": 1, "source": "gallery-file", "read_only": True},
    ]


async def test_deleting_a_gallery_file_person_is_409_saying_where_they_come_from(gallery_file: Path) -> None:
    async with running_web(gallery=str(gallery_file)) as web:
        refused = await web.client.delete("/v1/people/Amelie_Mauresmo")
        still_listed = [p["name"] for p in (await web.client.get("/v1/people")).json()["people"]]
        nobody = await web.client.delete("/v1/people/Nobody")
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "read_only"
    assert "gallery file" in error["message"] and str(gallery_file) in error["message"]
    assert "Amelie_Mauresmo" in still_listed
    assert nobody.status_code == 404
