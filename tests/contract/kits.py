"""What the queue contract fixture hands each test."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from facerec.ports import MessageQueue


@dataclass(frozen=True)
class QueueKit:
    """Makes queues of one backend. `tick` is the shortest visibility timeout it honours (SQS: whole
    seconds), so timing tests scale to the backend."""

    backend: str
    make: Callable[..., Awaitable[MessageQueue]]
    tick: float
