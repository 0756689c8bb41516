"""In-process adapters: a dict-backed blob store and an SQS-semantics queue for one event loop.

For unit tests of the tiers and as the executable reference of the port contracts; not shared between
processes (the local SQLite adapters are).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from facerec.adapters.lease_rule import next_lease
from facerec.messages import MAX_RESPONSE_BYTES
from facerec.ports import (
    BlobNotFound,
    InvalidKey,
    Lease,
    MessageTooLarge,
    QueueNotFound,
    QueueStats,
    ReceivedMessage,
    WebMember,
)
from facerec.reply_names import check_reply_queue_name, is_process_reply_queue

RECEIVE_MAX = 10


class MemoryBlobStore:
    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.objects: dict[str, bytes] = {}

    async def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        if not key or len(key) > 1024:
            raise InvalidKey(key)
        self.objects[key] = bytes(data)

    async def get(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError:
            raise BlobNotFound(key) from None

    async def delete(self, key: str) -> None:
        self.objects.pop(key, None)

    async def list(self, prefix: str = "", limit: int | None = None) -> list[str]:
        keys = sorted(k for k in self.objects if k.startswith(prefix))
        return keys if limit is None else keys[:limit]

    async def count(self, prefix: str = "") -> int:
        return sum(1 for k in self.objects if k.startswith(prefix))

    async def check(self) -> None:
        return None


@dataclass
class _Stored:
    message_id: str
    body: str
    visible_at: float
    receive_count: int = 0
    receipt: str | None = None


class MemoryQueue:
    receive_cancel_safe = True  # a receive takes messages synchronously: a cancelled wait took nothing

    def __init__(
        self,
        name: str = "memory",
        visibility_timeout: float = 30.0,
        max_receives: int | None = None,
        dead_letter: MemoryQueue | None = None,
        max_message_bytes: int = 1024,
    ) -> None:
        self.name = name
        self.visibility_timeout = visibility_timeout
        self.max_receives = max_receives
        self.dead_letter = dead_letter
        self.max_message_bytes = max_message_bytes
        self._messages: dict[str, _Stored] = {}
        self._arrived = asyncio.Event()

    async def send(self, body: str) -> str:
        if len(body.encode("utf-8")) > self.max_message_bytes:
            raise MessageTooLarge(f"{len(body.encode())} bytes > {self.max_message_bytes}")
        message_id = uuid.uuid4().hex
        self._messages[message_id] = _Stored(message_id, body, visible_at=time.monotonic())
        self._arrived.set()
        return message_id

    async def send_batch(self, bodies: Sequence[str]) -> list[str]:
        for body in bodies:
            if len(body.encode("utf-8")) > self.max_message_bytes:
                raise MessageTooLarge(f"{len(body.encode())} bytes > {self.max_message_bytes}")
        return [await self.send(body) for body in bodies]

    def _take(self, max_messages: int, visibility_timeout: float) -> list[ReceivedMessage]:
        now = time.monotonic()
        taken: list[ReceivedMessage] = []
        for stored in list(self._messages.values()):
            if len(taken) >= max_messages:
                break
            if stored.visible_at > now:
                continue
            if self.max_receives is not None and stored.receive_count >= self.max_receives:
                del self._messages[stored.message_id]
                if self.dead_letter is not None:
                    self.dead_letter._messages[stored.message_id] = _Stored(
                        stored.message_id, stored.body, visible_at=now
                    )
                    self.dead_letter._arrived.set()
                continue
            stored.receive_count += 1
            stored.receipt = uuid.uuid4().hex
            stored.visible_at = now + visibility_timeout
            taken.append(ReceivedMessage(stored.message_id, stored.body, stored.receipt, stored.receive_count))
        return taken

    async def receive(
        self, max_messages: int = 10, wait_seconds: float = 0.0, visibility_timeout: float | None = None
    ) -> list[ReceivedMessage]:
        max_messages = max(1, min(max_messages, RECEIVE_MAX))
        timeout = self.visibility_timeout if visibility_timeout is None else visibility_timeout
        deadline = time.monotonic() + max(0.0, min(wait_seconds, 20.0))
        while True:
            taken = self._take(max_messages, timeout)
            remaining = deadline - time.monotonic()
            if taken or remaining <= 0:
                return taken
            self._arrived.clear()
            # Messages also become visible again by time passing: wake at least every 50 ms.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=min(remaining, 0.05))

    def _by_receipt(self, receipt: str) -> _Stored | None:
        return next((m for m in self._messages.values() if m.receipt == receipt), None)

    async def delete_batch(self, receipts: Sequence[str]) -> None:
        for receipt in receipts:
            stored = self._by_receipt(receipt)
            if stored is not None:
                del self._messages[stored.message_id]

    async def change_visibility(self, receipts: Sequence[str], timeout_seconds: float) -> None:
        now = time.monotonic()
        for receipt in receipts:
            stored = self._by_receipt(receipt)
            if stored is not None:
                stored.visible_at = now + timeout_seconds
                if timeout_seconds <= 0:
                    self._arrived.set()

    async def stats(self) -> QueueStats:
        now = time.monotonic()
        visible = sum(1 for m in self._messages.values() if m.visible_at <= now)
        return QueueStats(visible=visible, in_flight=len(self._messages) - visible)

    async def check(self) -> None:
        return None


class MemoryCoordination:
    """Membership and leases in a dict, for one event loop (unit tests of leadership and of the web tier's
    deployment); `clock` is the wall clock leases expire by (injectable so tests need not sleep)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._members: dict[str, WebMember] = {}
        self._leases: dict[str, Lease] = {}

    async def heartbeat(self, member: WebMember) -> None:
        self._members[member.web_id] = member

    async def members(self) -> list[WebMember]:
        return [self._members[web_id] for web_id in sorted(self._members)]

    async def leave(self, web_id: str) -> None:
        self._members.pop(web_id, None)

    async def acquire(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        lease = next_lease(self._leases.get(name), name, holder, ttl_s, self._clock())
        if lease is not None:
            self._leases[name] = lease
        return lease

    async def release(self, name: str, holder: str) -> None:
        current = self._leases.get(name)
        if current is not None and current.holder == holder:
            # Kept, expired, rather than removed: the next holder's token must still grow.
            self._leases[name] = Lease(name, holder, min(current.expires_at, self._clock()), current.token)

    async def lease(self, name: str) -> Lease | None:
        return self._leases.get(name)

    async def check(self) -> None:
        return None


class MemoryReplyQueue(MemoryQueue):
    """A per-process reply queue: once deleted, sending to it or receiving from it raises QueueNotFound (as SQS
    does), also in a receive that was waiting when the queue was deleted."""

    deleted = False

    def _take(self, max_messages: int, visibility_timeout: float) -> list[ReceivedMessage]:
        if self.deleted:
            raise QueueNotFound(self.name)
        return super()._take(max_messages, visibility_timeout)

    async def send(self, body: str) -> str:
        if self.deleted:
            raise QueueNotFound(self.name)
        return await super().send(body)

    async def send_batch(self, bodies: Sequence[str]) -> list[str]:
        if self.deleted:
            raise QueueNotFound(self.name)
        return await super().send_batch(bodies)


class MemoryReplyQueues:
    """The per-process reply queues of deployment `prefix`, in memory (one event loop). `view()` is another handle
    on the same queues: what a second web process of the same deployment sees."""

    def __init__(
        self,
        prefix: str,
        visibility_timeout: float = 30.0,
        max_message_bytes: int = MAX_RESPONSE_BYTES,
        _queues: dict[str, MemoryReplyQueue] | None = None,
    ) -> None:
        self.prefix = prefix
        self.visibility_timeout = visibility_timeout
        self.max_message_bytes = max_message_bytes
        self._queues: dict[str, MemoryReplyQueue] = {} if _queues is None else _queues

    def view(self, prefix: str | None = None) -> MemoryReplyQueues:
        """Another handle on the same queues (of another deployment's `prefix`, if given: one shared store)."""
        return MemoryReplyQueues(prefix or self.prefix, self.visibility_timeout, self.max_message_bytes, self._queues)

    async def create(self, name: str) -> MemoryReplyQueue:
        check_reply_queue_name(self.prefix, name)
        queue = self._queues.get(name)
        if queue is None:
            queue = MemoryReplyQueue(name, self.visibility_timeout, max_message_bytes=self.max_message_bytes)
            self._queues[name] = queue
        return queue

    async def open(self, name: str) -> MemoryReplyQueue:
        if not is_process_reply_queue(self.prefix, name):
            raise QueueNotFound(name)  # never a handle on another queue a message merely names
        try:
            return self._queues[name]
        except KeyError:
            raise QueueNotFound(name) from None

    async def delete(self, name: str) -> None:
        queue = self._queues.pop(name, None)
        if queue is not None:
            queue.deleted = True
            queue._messages.clear()
            queue._arrived.set()  # a receive waiting on it raises now, not at its next check

    async def list(self) -> list[str]:
        return sorted(name for name in self._queues if is_process_reply_queue(self.prefix, name))
