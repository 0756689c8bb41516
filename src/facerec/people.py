"""The gallery kept in the data tier: who is enrolled, with which photos, as embedding records in a blob store.

Layout of the gallery store (torch-free, shared by the web tier, the workers and `facerec enroll --store`):
- `photos/<person>/<photo id><ext>`: an uploaded photo, kept so that people can be re-enrolled with other weights;
- `embeddings/<person>/<photo id>.json`: one `EmbeddingRecord` per photo that has exactly one face.
`<person>` is the percent-encoded name, so any name maps to a safe key and back.
"""

from __future__ import annotations

import base64
import re
import struct
import unicodedata
from collections.abc import Sequence
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field

from facerec.ports import BlobStore

PHOTOS = "photos/"
EMBEDDINGS = "embeddings/"
NAME_MAX_CHARS = 64
# Keys travel in 1024-byte queue messages (at most 200 characters each): bound the encoded form too.
KEY_MAX_CHARS = 120
_PHOTO_ID = re.compile(r"^[0-9a-f]{32}$")


class InvalidPersonName(ValueError):
    """A name that is empty, too long, or holds control characters or a slash."""


def normalise_name(name: str) -> str:
    """The canonical form of a person's name (NFC, outer spaces trimmed); raises InvalidPersonName."""
    cleaned = unicodedata.normalize("NFC", name).strip()
    if not cleaned:
        raise InvalidPersonName("the name is empty")
    if len(cleaned) > NAME_MAX_CHARS:
        raise InvalidPersonName(f"the name is longer than {NAME_MAX_CHARS} characters")
    if "/" in cleaned or any(unicodedata.category(ch).startswith("C") for ch in cleaned):
        raise InvalidPersonName("the name holds a slash or a control character")
    if len(quote(cleaned, safe="")) > KEY_MAX_CHARS:
        raise InvalidPersonName("the name is too long (fewer non-ASCII characters fit)")
    return cleaned


def person_key(name: str) -> str:
    return quote(normalise_name(name), safe="")


def person_name(key: str) -> str:
    return unquote(key)


def photo_key(name: str, photo_id: str, extension: str) -> str:
    extension = extension if re.fullmatch(r"\.[a-z0-9]{1,5}", extension) else ""
    return f"{PHOTOS}{person_key(name)}/{photo_id}{extension}"


def embedding_key(name: str, photo_id: str) -> str:
    return f"{EMBEDDINGS}{person_key(name)}/{photo_id}.json"


def person_prefixes(name: str) -> tuple[str, str]:
    """The photo and embedding key prefixes of one person (for deletion)."""
    key = person_key(name)
    return f"{PHOTOS}{key}/", f"{EMBEDDINGS}{key}/"


class EmbeddingRecord(BaseModel):
    """One enrolled photo's unit embedding, and how it was made (a worker ignores records of other models)."""

    model_config = ConfigDict(frozen=True)
    person: str
    photo_id: str = Field(pattern=_PHOTO_ID.pattern)
    weights: str
    crop_size: int
    margin: int
    normalisation: str
    vector_b64: str = Field(description="float32 little-endian, base64.")

    # struct, not numpy: the web tier reads these records and does not install numpy.
    @classmethod
    def from_vector(cls, vector: Sequence[float], **fields: object) -> EmbeddingRecord:
        data = struct.pack(f"<{len(vector)}f", *vector)
        # The fields come untyped (a recognizer's embedding_fields()): pydantic checks them, as cls(**...) would.
        return cls.model_validate({"vector_b64": base64.b64encode(data).decode("ascii"), **fields})

    def vector(self) -> list[float]:
        data = base64.b64decode(self.vector_b64)
        return list(struct.unpack(f"<{len(data) // 4}f", data))


def parse_embedding_key(key: str) -> tuple[str, str] | None:
    """`embeddings/<person>/<photo id>.json` -> (name, photo id); None for any other key."""
    if not key.startswith(EMBEDDINGS) or not key.endswith(".json"):
        return None
    parts = key[len(EMBEDDINGS) : -len(".json")].split("/")
    if len(parts) != 2 or not _PHOTO_ID.match(parts[1]):
        return None
    return person_name(parts[0]), parts[1]


async def enrolled_people(store: BlobStore) -> dict[str, int]:
    """Name -> number of enrolled photos, from the store's keys alone (cheap: one listing)."""
    people: dict[str, int] = {}
    for key in await store.list(EMBEDDINGS):
        parsed = parse_embedding_key(key)
        if parsed is not None:
            people[parsed[0]] = people.get(parsed[0], 0) + 1
    return dict(sorted(people.items()))


async def forget_person(store: BlobStore, name: str) -> int:
    """Delete a person's photos and embeddings; the number of objects deleted."""
    keys = [key for prefix in person_prefixes(name) for key in await store.list(prefix)]
    for key in keys:
        await store.delete(key)
    return len(keys)


async def save_enrollment(
    store: BlobStore, name: str, photo_id: str, photo: bytes, extension: str, record: EmbeddingRecord
) -> None:
    """Keep an enrolled photo and its embedding record (the record last: listing records finds whole entries)."""
    await store.put(photo_key(name, photo_id, extension), photo)
    await store.put(embedding_key(name, photo_id), record.model_dump_json().encode("utf-8"), "application/json")
