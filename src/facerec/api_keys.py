"""API keys with roles, stored as hashes in the deployment's gallery store (local directory or S3 bucket).

A key is `frk_<id>_<secret>`: the id names its record (`api-keys/<id>.json`), the secret is 32 random bytes.
Only the SHA-256 of the whole key is stored: keys are random, so a slow password hash would buy nothing, and
a stolen record cannot be turned back into a key. Every check reads the record again, so a revoked key stops
working at the next request (one small blob read per authenticated request).

Roles: `manage` may do everything (enroll, delete, recognize); `recognize` may recognize and verify only.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from facerec.ports import BlobNotFound, BlobStore

Role = Literal["recognize", "manage"]
ROLES: tuple[Role, ...] = ("recognize", "manage")
KEYS_PREFIX = "api-keys/"
_KEY = re.compile(r"^frk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
NAME_MAX_CHARS = 100


class KeyRecord(BaseModel):
    id: str
    role: Role
    name: str = Field("", max_length=NAME_MAX_CHARS)
    sha256: str
    created_at: float


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("ascii")).hexdigest()


def _record_key(key_id: str) -> str:
    return f"{KEYS_PREFIX}{key_id}.json"


async def create_key(store: BlobStore, role: Role, name: str = "") -> tuple[str, KeyRecord]:
    """A new key (shown once: only its hash is stored) and its record."""
    key_id = secrets.token_hex(6)
    key = f"frk_{key_id}_{secrets.token_urlsafe(32)}"
    record = KeyRecord(id=key_id, role=role, name=name, sha256=_digest(key), created_at=time.time())
    await store.put(_record_key(key_id), record.model_dump_json().encode(), "application/json")
    return key, record


async def list_keys(store: BlobStore) -> list[KeyRecord]:
    records = []
    for object_key in await store.list(KEYS_PREFIX):
        record = await _read(store, object_key)
        if record is not None:
            records.append(record)
    return sorted(records, key=lambda record: record.created_at)


async def revoke_key(store: BlobStore, key_id: str) -> bool:
    """Delete the key's record; False when there is no such key."""
    if not re.fullmatch(r"[0-9a-f]{12}", key_id) or await _read(store, _record_key(key_id)) is None:
        return False
    await store.delete(_record_key(key_id))
    return True


async def has_role(store: BlobStore, role: Role) -> bool:
    """Whether any key with `role` exists (management is refused off loopback until a manage key does)."""
    return any(record.role == role for record in await list_keys(store))


async def verify_key(store: BlobStore, key: str) -> KeyRecord | None:
    """The key's record when `key` is a current key, else None (malformed, unknown, revoked or wrong secret)."""
    match = _KEY.match(key)
    if match is None:
        return None
    record = await _read(store, _record_key(match.group(1)))
    # Constant time: the comparison must not tell an attacker how much of a guessed secret was right.
    if record is None or not hmac.compare_digest(record.sha256, _digest(key)):
        return None
    return record


def grants(record: KeyRecord, needed: Role) -> bool:
    return record.role == "manage" or record.role == needed


async def _read(store: BlobStore, object_key: str) -> KeyRecord | None:
    try:
        return KeyRecord.model_validate_json(await store.get(object_key))
    except (BlobNotFound, ValidationError):
        return None  # gone, or not a record we wrote: never a valid key
