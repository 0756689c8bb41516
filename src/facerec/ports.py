"""The three ports every tier talks to. Adapters live in `facerec.adapters`, one module each.

The web tier, the worker and the scaler depend on these Protocols only, never on boto3 or sqlite.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable


class PortError(Exception):
    """The backing service failed or is unreachable (maps to HTTP 503 in the web tier)."""


class BlobNotFound(KeyError):
    """No object under that key."""


class InvalidKey(ValueError):
    """A key that is empty, too long, or could escape its store."""


class MessageTooLarge(ValueError):
    """A message body over the queue's size limit."""


@runtime_checkable
class BlobStore(Protocol):
    """A bucket: opaque bytes under string keys."""

    name: str

    async def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    async def get(self, key: str) -> bytes:
        """Raises BlobNotFound."""
        ...

    async def delete(self, key: str) -> None:
        """Deleting a missing key is not an error (as in S3)."""
        ...

    async def list(self, prefix: str = "", limit: int | None = None) -> list[str]:
        """Keys under `prefix`, sorted."""
        ...

    async def count(self, prefix: str = "") -> int: ...

    async def check(self) -> None:
        """Raise PortError when the store cannot be used (for readiness probes)."""
        ...


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    message_id: str
    body: str
    receipt: str
    """Opaque handle for delete/change_visibility; valid only for this delivery."""
    receive_count: int
    """1 on the first delivery."""


@dataclass(frozen=True, slots=True)
class QueueStats:
    visible: int
    """Waiting to be received (approximate on SQS)."""
    in_flight: int
    """Received and not yet deleted or timed out."""


@runtime_checkable
class MessageQueue(Protocol):
    """An SQS-like queue: at-least-once delivery, visibility timeout, dead-letter after max receives."""

    name: str
    max_message_bytes: int
    receive_cancel_safe: bool
    """True when cancelling a waiting `receive` never spends a delivery: nothing was taken, or what the
    cancelled call took is handed back with its receive count restored. False on SQS, where a cancelled long
    poll may still take messages server-side (hidden for a visibility timeout, one receive spent)."""

    async def send(self, body: str) -> str:
        """Returns the message id. Raises MessageTooLarge."""
        ...

    async def send_batch(self, bodies: Sequence[str]) -> list[str]:
        """Any number of bodies (chunked into backend-sized batches). Returns message ids in order."""
        ...

    async def receive(
        self, max_messages: int = 10, wait_seconds: float = 0.0, visibility_timeout: float | None = None
    ) -> list[ReceivedMessage]:
        """Up to `max_messages` (at most 10 per call, as on SQS); waits up to `wait_seconds` (<= 20) for the
        first one. Returns an empty list when nothing arrived in time."""
        ...

    async def delete_batch(self, receipts: Sequence[str]) -> None:
        """Acknowledge; a stale or unknown receipt is ignored."""
        ...

    async def change_visibility(self, receipts: Sequence[str], timeout_seconds: float) -> None:
        """Extend (or with 0, release) the visibility of messages in hand."""
        ...

    async def stats(self) -> QueueStats: ...

    async def check(self) -> None:
        """Raise PortError when the queue cannot be used (for readiness probes)."""
        ...


class WorkerState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    worker_id: str
    name: str
    """`app-tier-instance-<n>` on AWS."""
    state: WorkerState
    launched_at: float | None = None
    """Unix time the worker was last started, when known."""


@runtime_checkable
class Fleet(Protocol):
    """The app-tier workers. State always comes from the backing system, never from memory alone."""

    max_workers: int

    async def list(self) -> list[WorkerInfo]:
        """All workers this fleet manages, in every state."""
        ...

    async def start(self, count: int) -> builtins.list[WorkerInfo]:
        """Start up to `count` more, never exceeding `max_workers` pending+running. Returns those started."""
        ...

    async def stop(self, worker_ids: Sequence[str]) -> None:
        """Graceful stop: the worker finishes or releases its batch."""
        ...

    async def close(self) -> None:
        """Release clients; local fleets also stop their workers."""
        ...


class QueueNotFound(LookupError):
    """No queue of that name (a reply queue deleted with its web process, or reaped after it died)."""


@runtime_checkable
class ReplyQueues(Protocol):
    """The per-web-process response queues of a deployment, `Settings.reply_queue(web_id)`
    (`<prefix>-resp-<web id>`), besides the fixed `<prefix>-resp-queue` that `DataTier.responses` is.

    A web process creates its own at start when another process already answers on the fixed one, deletes it at a
    clean stop, and reaps those of processes that died (their membership heartbeat went stale). Workers open the
    queue a request names as its `reply_to`."""

    async def create(self, name: str) -> MessageQueue:
        """Create (idempotent) and open a queue sized for responses."""
        ...

    async def open(self, name: str) -> MessageQueue:
        """An existing reply queue (handles may be cached per name). Raises QueueNotFound."""
        ...

    async def delete(self, name: str) -> None:
        """Delete the queue and every message in it; a missing queue is not an error."""
        ...

    async def list(self) -> builtins.list[str]:
        """Names of this deployment's per-process reply queues (never the fixed `<prefix>-resp-queue`), sorted."""
        ...


@dataclass(frozen=True, slots=True)
class WebMember:
    """One web process of a deployment, as its last heartbeat described it."""

    web_id: str
    """`[0-9a-f]{12}`, random per process start."""
    reply_queue: str
    """The queue this process reads its answers from (the fixed `<prefix>-resp-queue` or its own)."""
    in_flight: int
    """Requests this process was waiting on at its last heartbeat (the scaler sums them)."""
    heartbeat_at: float
    """Unix time of the heartbeat, by the writer's clock."""
    address: str = ""
    """Where it serves (`host:port`), for banners, logs and `/v1/deployment`-style views."""
    pid: int = 0

    def live_at(self, now: float, stale_s: float) -> bool:
        """Whether its last heartbeat is at most `stale_s` old at `now` (older: the process is dead, reapable)."""
        return now - self.heartbeat_at <= stale_s


@dataclass(frozen=True, slots=True)
class Lease:
    """A named lease with expiry (`scaler`: who runs the scaler; `reply:<prefix>-resp-queue`: who reads the fixed
    response queue)."""

    name: str
    holder: str
    """The holder's web id."""
    expires_at: float
    """Unix time; a lease past it is free for anyone to take."""
    token: int
    """Fencing token: grows by one every time the lease changes hands (not on renewal)."""

    def live_at(self, now: float) -> bool:
        """Whether the lease is still its holder's at `now` (not yet expired)."""
        return self.expires_at > now


@runtime_checkable
class Coordination(Protocol):
    """Membership heartbeats and leases for the web processes of one deployment, kept in the data tier (no new
    server): a table in the local SQLite database; objects written with S3 conditional writes on AWS."""

    async def heartbeat(self, member: WebMember) -> None:
        """Insert or replace `member` (keyed by web id)."""
        ...

    async def members(self) -> builtins.list[WebMember]:
        """Every member that has not left, stale ones included (the caller decides what is stale), by web id."""
        ...

    async def leave(self, web_id: str) -> None:
        """Forget a member (a clean stop, or a reaped dead one); a missing one is not an error."""
        ...

    async def acquire(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        """Take the lease when it is free or expired, or renew it when `holder` holds it; None while another
        holder's lease is live. Atomic across processes (and machines, on AWS): two callers never both get it."""
        ...

    async def release(self, name: str, holder: str) -> None:
        """Give the lease up at once if `holder` holds it (a clean stop hands over without waiting for expiry)."""
        ...

    async def lease(self, name: str) -> Lease | None:
        """The lease's last record, live or expired (compare `expires_at` with the time), None when it was never
        taken: who holds the scaler, for banners and `/readyz`. Read-only; added with the adapters (#15)."""
        ...

    async def check(self) -> None:
        """Raise PortError when the coordination store cannot be used."""
        ...


@dataclass(frozen=True, slots=True)
class DataTier:
    """The stores and queues one process uses; built by `facerec.backend.open_data_tier(settings)`."""

    inputs: BlobStore
    outputs: BlobStore
    requests: MessageQueue
    responses: MessageQueue
    dead_letters: MessageQueue
    """Requests that failed `max_receives` times (redrive target of `requests`)."""
    gallery: BlobStore | None = None
    """People enrolled through the API (`facerec.people` layout); None where a deployment has no such store."""
    replies: ReplyQueues | None = None
    """Per-web-process reply queues; None where the backend runs one web process only (tests' fakes)."""
    coordination: Coordination | None = None
    """Membership and leases of the deployment's web processes; None where there is only ever one."""
