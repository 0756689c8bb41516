"""The gallery kept in the data tier: who is enrolled, with which photos, as embedding records in a blob store.

Layout of the gallery store (torch-free, shared by the web tier, the workers and `facerec enroll --store`):
- `photos/<person>/<photo id><ext>`: an uploaded photo, kept so that people can be re-enrolled with other weights;
- `embeddings/<person>/<photo id>.json`: one `EmbeddingRecord` per photo that has exactly one face;
- `generations/<person>/<token>`: the person's generation markers (empty objects); the greatest token is current.
`<person>` is the percent-encoded name, so any valid name (`facerec.validation.person_name`) maps to a safe key
and back.

Enrollment consistency
----------------------
The web tier tells a client, for each photo, "used" or "rejected"; the store must end up agreeing, even when
a worker answers after the deadline, a message is dead-lettered while a slow worker still holds it, or the
person is deleted while their photos are being enrolled. Three rules give that:

1. A delete (`forget_person`) first bumps the person's generation (a new, greater token), then deletes their
   photos and records. An enrollment carries the generation current when the web tier sent it, and its record
   carries it too. GallerySync uses only records of the person's current generation (records without one
   count only while the person has no generation at all), so a record of an older generation can never make a
   deleted person recognizable again.
2. What the web tier reports as rejected (worker error, 502, 504, failed store or send) it deletes: the photo
   first, then the record of that photo id (`discard_enrollment`).
3. A worker writes a record only before the request's deadline, and then verifies (`commit_enrollment`): the
   photo still exists and the generation is still current; otherwise it deletes the record it just wrote and
   answers with an error. S3 has no write conditional on *another* object's state, so this is write-then-verify
   rather than a conditional write; it is exact because S3, the local store and the memory store are strongly
   consistent (a read or listing after a completed write or delete sees it):
   - the web deletes the photo before the record, a delete bumps the generation before listing what to delete;
   - if the worker's write lands before the web's (or the delete's) listing/deletion of the record, that
     deletion removes it; if it lands after, the worker's verification (which follows its write) already sees
     the photo gone or the generation bumped, and the worker removes the record itself.
   Either way no record survives a photo that was reported rejected or a delete that followed it.

Remaining window, stated precisely: between the worker's write and its verification (two store calls) the
record exists; a listing in that window counts it (`GET /v1/people`), and a GallerySync refresh in it uses it
only if its generation is current (i.e. only the 504/502 case, for a few milliseconds, until the next refresh).
A worker that dies inside that window leaves the record behind: GallerySync ignores it if the person was
deleted (older generation); after a 504/502 of that single photo it stays until the person is deleted.
"""

from __future__ import annotations

import base64
import re
import struct
import time
from collections.abc import Sequence
from urllib.parse import quote, unquote

from pydantic import BaseModel, ConfigDict, Field

from facerec.ports import BlobStore
from facerec.validation import KEY_MAX_CHARS as KEY_MAX_CHARS
from facerec.validation import NAME_MAX_CHARS as NAME_MAX_CHARS
from facerec.validation import InvalidPersonName as InvalidPersonName
from facerec.validation import person_name

PHOTOS = "photos/"
EMBEDDINGS = "embeddings/"
GENERATIONS = "generations/"
DEADLINE_EXCEEDED = "deadline_exceeded"
PERSON_DELETED = "person_deleted"
PHOTO_DELETED = "photo_deleted"
_PHOTO_ID = re.compile(r"^[0-9a-f]{32}$")
_GENERATION = re.compile(r"^[0-9]{20}$")


def normalise_name(name: str) -> str:
    """The canonical form of a person's name; raises InvalidPersonName (see `facerec.validation.person_name`)."""
    return person_name(name)


def person_key(name: str) -> str:
    return quote(normalise_name(name), safe="")


def name_from_key(key: str) -> str:
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
    generation: str | None = Field(
        None, description="The person's generation when the photo was enrolled (None: before any delete)."
    )

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
    try:
        return person_name(name_from_key(parts[0])), parts[1]
    except InvalidPersonName:
        return None  # written before names were validated (or by hand): never a gallery entry


async def enrolled_people(store: BlobStore) -> dict[str, int]:
    """Name -> number of enrolled photos, from the store's keys alone (cheap: one listing)."""
    people: dict[str, int] = {}
    for key in await store.list(EMBEDDINGS):
        parsed = parse_embedding_key(key)
        if parsed is not None:
            people[parsed[0]] = people.get(parsed[0], 0) + 1
    return dict(sorted(people.items()))


def generation_prefix(name: str) -> str:
    return f"{GENERATIONS}{person_key(name)}/"


def _latest(keys: Sequence[str]) -> str | None:
    tokens = [key.rsplit("/", 1)[1] for key in keys]
    valid = [token for token in tokens if _GENERATION.match(token)]
    return max(valid) if valid else None


async def current_generation(store: BlobStore, name: str) -> str | None:
    """The person's current generation token (None until their first delete): one listing."""
    return _latest(await store.list(generation_prefix(name)))


async def current_generations(store: BlobStore) -> dict[str, str]:
    """Name -> current generation token, for every person ever deleted: one listing (for GallerySync)."""
    current: dict[str, str] = {}
    for key in await store.list(GENERATIONS):
        parts = key[len(GENERATIONS) :].split("/")
        if len(parts) != 2 or not _GENERATION.match(parts[1]):
            continue
        try:
            name = person_name(name_from_key(parts[0]))
        except InvalidPersonName:
            continue
        if parts[1] > current.get(name, ""):
            current[name] = parts[1]
    return current


async def bump_generation(store: BlobStore, name: str) -> str:
    """Make a new current generation for the person (greater than every existing one) and return it.

    Tokens are 20-digit nanosecond times, forced past the current one, so a bump on a host whose clock lags
    still supersedes it; two concurrent bumps both supersede the generation either of them started from.
    Older markers are removed afterwards (the greatest token is current, so they are only clutter)."""
    previous = await store.list(generation_prefix(name))
    latest = _latest(previous)
    token = f"{max(time.time_ns(), int(latest or 0) + 1):020d}"
    await store.put(generation_prefix(name) + token, b"", "text/plain")
    for key in previous:
        await store.delete(key)
    return token


def record_is_current(record: EmbeddingRecord, generation: str | None) -> bool:
    """Whether a record belongs to its person's current generation (`generation`: None before any delete)."""
    return record.generation == generation


async def forget_person(store: BlobStore, name: str) -> int:
    """Delete a person's photos and embeddings; the number of objects deleted (0: no such person, and then
    nothing changes). The generation is bumped before the objects to delete are listed, so an enrollment in
    flight can never write a record that outlives this delete (see the module docstring)."""
    prefixes = person_prefixes(name)
    if not any([await store.list(prefix, limit=1) for prefix in prefixes]):
        return 0
    await bump_generation(store, name)
    keys = [key for prefix in prefixes for key in await store.list(prefix)]
    for key in keys:
        await store.delete(key)
    return len(keys)


async def discard_enrollment(store: BlobStore, photo_key: str, record_key: str) -> None:
    """Delete a photo reported as rejected, then any record of it (idempotent; photo first: rule 2)."""
    await store.delete(photo_key)
    await store.delete(record_key)


async def commit_enrollment(
    store: BlobStore,
    photo_key: str,
    record_key: str,
    record: EmbeddingRecord,
    deadline: float | None,
) -> str | None:
    """Write a worker's record if the request is still awaited and still valid: None when written and kept,
    else why not (`deadline_exceeded`, `person_deleted`, `photo_deleted`), and then no record of it is left.
    Write-then-verify: see the module docstring."""
    if deadline is not None and time.time() > deadline:
        return DEADLINE_EXCEEDED
    await store.put(record_key, record.model_dump_json().encode("utf-8"), "application/json")
    generation_kept = record.generation == await current_generation(store, record.person)
    photo_kept = photo_key in await store.list(photo_key, limit=1)
    if generation_kept and photo_kept:
        return None
    await store.delete(record_key)
    return PHOTO_DELETED if generation_kept else PERSON_DELETED


async def save_enrollment(
    store: BlobStore,
    name: str,
    photo_id: str,
    photo: bytes,
    extension: str,
    record: EmbeddingRecord,
) -> None:
    """Keep an enrolled photo and its embedding record (the record last: listing records finds whole entries);
    the record should carry the person's current generation (`current_generation`) to be used."""
    await store.put(photo_key(name, photo_id, extension), photo)
    await store.put(embedding_key(name, photo_id), record.model_dump_json().encode("utf-8"), "application/json")
