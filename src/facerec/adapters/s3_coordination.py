"""Coordination on S3: the web processes' membership and leases as small JSON objects in the deployment's
gallery bucket, under `_deployment/` (nothing that lists the bucket's people, keys or gallery file looks there).

    _deployment/members/<web id>.json   one per web process: its last heartbeat (overwritten each time)
    _deployment/leases/<name>.json      holder, expiry, fencing token, and a nonce

Why S3: it needs no new server (the bucket exists already), it is strongly consistent (read-after-write,
list-after-write), and its conditional writes are atomic: `PutObject` with `If-None-Match: *` succeeds only when
no object exists, with `If-Match: <etag>` only when the object is still the one read. Acquiring a lease is read,
decide, conditional write: of two processes racing for the same lease from the same state, S3 lets exactly one
write win and answers the other 412 PreconditionFailed (or 409 ConditionalRequestConflict while the first
write is in progress); that one gets None. Every write carries a fresh nonce so its ETag differs from the last.

Clocks: a lease's expiry is the writer's wall clock plus the TTL, and a reader compares it with its own wall
clock. The instances must keep time (AWS Time Sync / NTP: skew of milliseconds, far below the TTL); a clock that
runs ahead takes an expired lease early, which at worst runs two scalers for the skew's length (the fleet still
never exceeds its size: EC2 counts the instances).
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from botocore.exceptions import ClientError

from facerec.adapters.aws_session import AwsClients
from facerec.adapters.lease_rule import next_lease
from facerec.adapters.s3_blob import aws_errors
from facerec.ports import Lease, PortError, WebMember
from facerec.reply_names import WEB_ID_PATTERN, is_web_id

if TYPE_CHECKING:  # stubs from the `test` extra, for annotations only
    from types_aiobotocore_s3.type_defs import PutObjectRequestTypeDef

log = logging.getLogger(__name__)

DEPLOYMENT_PREFIX = "_deployment/"
"""Everything coordination writes in the gallery bucket lives under it (the IAM policy grants it separately)."""
MEMBERS_PREFIX = DEPLOYMENT_PREFIX + "members/"
LEASES_PREFIX = DEPLOYMENT_PREFIX + "leases/"
LOST_RACE_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey"})
"""A conditional write that lost: another write came first (412), is in progress (409), or the object it
meant to replace is gone (NoSuchKey, for If-Match)."""
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def member_key(web_id: str) -> str:
    if not is_web_id(web_id):
        raise ValueError(f"web id must match {WEB_ID_PATTERN}: {web_id!r}")
    return f"{MEMBERS_PREFIX}{web_id}.json"


def lease_key(name: str) -> str:
    if not name or len(name) > 200:
        raise ValueError("lease name must be 1..200 characters")
    return f"{LEASES_PREFIX}{quote(name, safe=':-_.')}.json"


def _code(exc: BaseException | None) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _member(data: dict[str, Any]) -> WebMember:
    return WebMember(
        web_id=str(data["web_id"]),
        reply_queue=str(data["reply_queue"]),
        in_flight=int(data["in_flight"]),
        heartbeat_at=float(data["heartbeat_at"]),
        address=str(data.get("address", "")),
        pid=int(data.get("pid", 0)),
    )


def _lease(data: dict[str, Any], key: str) -> Lease | None:
    try:
        return Lease(str(data["name"]), str(data["holder"]), float(data["expires_at"]), int(data["token"]))
    except (KeyError, TypeError, ValueError):
        log.warning("coordination_lease_unreadable", extra={"key": key})
        return None


class S3Coordination:
    """`bucket` is the deployment's gallery bucket; `clock` is the wall clock leases expire by."""

    def __init__(self, aws: AwsClients, bucket: str, clock: Callable[[], float] = time.time) -> None:
        self._aws = aws
        self.bucket = bucket
        self._clock = clock
        self._written: dict[str, tuple[str, Lease]] = {}
        """Lease name -> the ETag and lease of this adapter's last successful write of it (renewals need no read)."""

    # --- objects ----------------------------------------------------------------------------------

    async def _read(self, key: str) -> tuple[dict[str, Any], str] | None:
        """The object's JSON and ETag, or None when there is none."""
        try:
            with aws_errors(f"s3 get {self.bucket}/{key}"):
                s3 = await self._aws.s3()
                reply = await s3.get_object(Bucket=self.bucket, Key=key)
                async with reply["Body"] as stream:
                    body = await stream.read()
        except PortError as exc:
            if _code(exc.__cause__) in _NOT_FOUND_CODES:
                return None
            raise
        try:
            data = json.loads(body)
        except ValueError:
            log.warning("coordination_object_unreadable", extra={"bucket": self.bucket, "key": key})
            data = {}
        return (data if isinstance(data, dict) else {}), str(reply["ETag"])

    async def _write(
        self, key: str, data: dict[str, Any], if_match: str | None = None, create: bool = False
    ) -> str | None:
        """Put `data` as JSON and return the new object's ETag. Conditional (`if_match` an ETag, or `create`: only
        if no object exists): None when the condition did not hold."""
        request: PutObjectRequestTypeDef = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": json.dumps(data, sort_keys=True).encode("utf-8"),
            "ContentType": "application/json",
        }
        if if_match is not None:
            request["IfMatch"] = if_match
        elif create:
            request["IfNoneMatch"] = "*"
        try:
            with aws_errors(f"s3 put {self.bucket}/{key}"):
                s3 = await self._aws.s3()
                reply = await s3.put_object(**request)
        except PortError as exc:
            if (if_match is not None or create) and _code(exc.__cause__) in LOST_RACE_CODES:
                return None
            raise
        return str(reply.get("ETag", ""))

    async def _delete(self, key: str) -> None:
        with aws_errors(f"s3 delete {self.bucket}/{key}"):
            s3 = await self._aws.s3()
            await s3.delete_object(Bucket=self.bucket, Key=key)

    async def _keys(self, prefix: str) -> builtins.list[str]:
        keys: list[str] = []
        with aws_errors(f"s3 list {self.bucket}/{prefix}"):
            s3 = await self._aws.s3()
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    # --- membership -------------------------------------------------------------------------------

    async def heartbeat(self, member: WebMember) -> None:
        await self._write(member_key(member.web_id), asdict(member))

    async def members(self) -> builtins.list[WebMember]:
        keys = [key for key in await self._keys(MEMBERS_PREFIX) if key.endswith(".json")]
        found = await asyncio.gather(*(self._read(key) for key in keys))
        members: list[WebMember] = []
        for key, item in zip(keys, found, strict=True):
            if item is None:  # left between the listing and the read
                continue
            try:
                members.append(_member(item[0]))
            except (KeyError, TypeError, ValueError):
                log.warning("coordination_member_unreadable", extra={"bucket": self.bucket, "key": key})
        return sorted(members, key=lambda member: member.web_id)

    async def leave(self, web_id: str) -> None:
        await self._delete(member_key(web_id))  # S3: deleting a missing key succeeds

    # --- leases -----------------------------------------------------------------------------------

    async def acquire(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        key = lease_key(name)
        mine = self._written.get(name)
        if mine is not None and mine[1].holder == holder:
            # A renewal: one conditional write on the ETag of our own last write, which holds only if nobody
            # wrote the lease since (so we still hold it). Otherwise read what is there and decide as usual.
            renewed = await self._put_lease(key, next_lease(mine[1], name, holder, ttl_s, self._clock()), mine[0])
            if renewed is not None:
                return renewed
        current = await self._read(key)
        now = self._clock()
        etag: str | None = None
        last: Lease | None = None
        if current is not None:
            data, etag = current
            # An unreadable record counts as expired and its token as 0: it is replaced, never a deadlock.
            last = _lease(data, key) or Lease(name, "", 0.0, 0)
        return await self._put_lease(key, next_lease(last, name, holder, ttl_s, now), etag)

    async def _put_lease(self, key: str, lease: Lease | None, etag: str | None) -> Lease | None:
        """Write `lease` if the object is still `etag` (None: still absent); the lease, or None."""
        if lease is None:
            return None
        record = {**asdict(lease), "nonce": uuid.uuid4().hex, "written_at": self._clock()}
        written = await self._write(key, record, if_match=etag, create=etag is None)
        if written is None:
            self._written.pop(lease.name, None)
            log.debug("lease_race_lost", extra={"lease": lease.name, "holder": lease.holder})
            return None
        self._written[lease.name] = (written, lease)
        return lease

    async def release(self, name: str, holder: str) -> None:
        """Rewrite the lease as expired (same holder and token: the next holder's token still grows), only if
        `holder` still holds it; losing a race to a new holder is fine."""
        key = lease_key(name)
        self._written.pop(name, None)
        current = await self._read(key)
        if current is None or current[0].get("holder") != holder:
            return
        data, etag = current
        now = self._clock()
        expired = min(float(data.get("expires_at", 0.0)), now)
        await self._write(key, {**data, "expires_at": expired, "nonce": uuid.uuid4().hex, "written_at": now}, etag)

    async def lease(self, name: str) -> Lease | None:
        current = await self._read(lease_key(name))
        return None if current is None else _lease(current[0], lease_key(name))

    async def check(self) -> None:
        with aws_errors(f"s3 bucket {self.bucket}"):
            s3 = await self._aws.s3()
            await s3.head_bucket(Bucket=self.bucket)

    # --- for `facerec aws status` -------------------------------------------------------------------

    async def leases(self) -> builtins.list[Lease]:
        """Every lease object, expired ones included, by name."""
        keys = await self._keys(LEASES_PREFIX)
        found = await asyncio.gather(*(self._read(key) for key in keys))
        leases = [_lease(item[0], key) for key, item in zip(keys, found, strict=True) if item is not None]
        return sorted((lease for lease in leases if lease is not None), key=lambda lease: lease.name)
