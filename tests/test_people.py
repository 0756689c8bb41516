"""Gallery management through the API: enroll, list and forget people; every worker sees each change within
seconds without a restart (two workers, in-process data tier, a fake model that recognizes colours)."""

from __future__ import annotations

import asyncio

import pytest

from facerec import people
from tests.colour_model import ADA, BOB, NOBODY, ColourModel, photo, service, until


async def test_enroll_list_recognize_and_forget_across_two_workers() -> None:
    models = [ColourModel(), ColourModel()]
    async with service(models) as client:
        assert (await client.get("/v1/people")).json() == {"people": []}
        files = [
            ("photos", ("ada1.jpg", photo(ADA), "image/jpeg")),
            ("photos", ("ada2.jpg", photo((205, 45, 45)), "image/jpeg")),
            ("photos", ("empty-room.jpg", photo(NOBODY), "image/jpeg")),
            ("photos", ("group.jpg", photo((250, 250, 250)), "image/jpeg")),
            ("photos", ("notes.txt", b"not an image at all", "text/plain")),
        ]
        response = await client.post("/v1/people/Ada Lovelace/photos", files=files)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["person"] == "Ada Lovelace"
        assert sorted(body["used"]) == ["ada1.jpg", "ada2.jpg"]
        reasons = {r["filename"]: r["reason"] for r in body["rejected"]}
        assert set(reasons) == {"empty-room.jpg", "group.jpg", "notes.txt"}
        assert "no face" in reasons["empty-room.jpg"] and "2 faces" in reasons["group.jpg"]
        assert "not a JPEG" in reasons["notes.txt"]

        listed = (await client.get("/v1/people")).json()
        assert listed == {
            "people": [{"name": "Ada Lovelace", "photos": 2, "embeddings": 2, "source": "enrolled", "read_only": False}]
        }
        # Every worker knows her within a few seconds, without a restart.
        seen_after = await until(lambda: all("Ada Lovelace" in m.people for m in models))
        assert seen_after < 3.0
        answers = await asyncio.gather(
            *(client.post("/", files={"inputFile": (f"q{i}.jpg", photo(ADA), "image/jpeg")}) for i in range(8))
        )
        assert {a.text for a in answers} == {f"q{i}:Ada Lovelace" for i in range(8)}

        assert (await client.delete("/v1/people/Ada Lovelace")).status_code == 204
        await until(lambda: all("Ada Lovelace" not in m.people for m in models))
        assert (await client.get("/v1/people")).json() == {"people": []}
        assert (await client.post("/", files={"inputFile": ("q.jpg", photo(ADA), "image/jpeg")})).text == "q:Unknown"
        missing = await client.delete("/v1/people/Ada Lovelace")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


# Names as they appear in the URL path (percent-encoded): blank, a slash, a tab, too long, too long once encoded.
@pytest.mark.parametrize("name", ["%20%20", "a%2Fb", "tab%09here", "x" * 65, "%C3%A9" * 30])
async def test_invalid_names_are_422(name: str) -> None:
    async with service([ColourModel()]) as client:
        files = [("photos", ("a.jpg", photo(ADA), "image/jpeg"))]
        response = await client.post(f"/v1/people/{name}/photos", files=files)
        if response.status_code == 404:  # a slash splits the path: no such route, still a clear 4xx
            return
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_name"


async def test_enroll_without_photos_is_422_naming_the_field() -> None:
    async with service([ColourModel()]) as client:
        response = await client.post("/v1/people/Bob/photos", files={"inputFile": ("a.jpg", photo(BOB), "image/jpeg")})
    assert response.status_code == 422
    assert "'photos'" in response.json()["error"]["message"]


def test_person_keys_round_trip_and_records_encode_vectors() -> None:
    for name in ["Ada Lovelace", "Zoë O'Neil", "李小龍", "50% off"]:
        key = people.embedding_key(name, "0" * 32)
        assert people.parse_embedding_key(key) == (people.normalise_name(name), "0" * 32)
        assert ".." not in key and key.count("/") == 2
    record = people.EmbeddingRecord.from_vector(
        [0.5, -0.25, 1.0], person="Ada", photo_id="f" * 32, weights="w", crop_size=160, margin=14, normalisation="n"
    )
    assert record.vector() == [0.5, -0.25, 1.0]
    assert people.parse_embedding_key("embeddings/Ada/not-an-id.json") is None
    assert people.parse_embedding_key("photos/Ada/" + "0" * 32 + ".jpg") is None
