"""What the queue contract fixture hands each test."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from facerec.ports import Coordination, MessageQueue


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
