"""What the queue contract fixture hands each test."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from facerec.ports import Coordination, MessageQueue, ReplyQueues


@dataclass(frozen=True)
class QueueKit:
    """Makes queues of one backend. `tick` is the shortest visibility timeout it honours (SQS: whole
    seconds), so timing tests scale to the backend."""

    backend: str
    make: Callable[..., Awaitable[MessageQueue]]
    tick: float


class ManualClock:
    """A wall clock tests move by hand: leases expire without sleeping. Starts at a realistic Unix time."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class CoordinationKit:
    """One Coordination adapter whose leases expire by `clock` (each adapter takes a `clock=` argument)."""

    backend: str
    coordination: Coordination
    clock: ManualClock


@dataclass(frozen=True)
class ReplyKit:
    """One backend's reply queues of deployment `prefix` (`replies`), and what the contract compares them with."""

    backend: str
    prefix: str
    replies: ReplyQueues
    other_view: Callable[[], Awaitable[ReplyQueues]]
    """Another handle on the same deployment's reply queues, as a second web process opens it (its own database
    connection, or its own clients)."""
    for_prefix: Callable[[str], Awaitable[ReplyQueues]]
    """The reply queues of another deployment (another prefix) on the same backend."""
    make_fixed: Callable[[], Awaitable[MessageQueue]]
    """The deployment's fixed `<prefix>-resp-queue` (`DataTier.responses`), existing, on the same backend."""
