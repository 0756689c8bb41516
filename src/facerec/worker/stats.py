"""Counters a worker keeps about itself (logged per batch, readable by tests and the benchmark)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


@dataclass
class WorkerStats:
    batches: int = 0
    processed: int = 0
    """Requests answered with a result (including NoFace / Unknown)."""
    errors: int = 0
    """Requests answered with a typed error."""
    discarded: int = 0
    """Messages deleted without an answer (no request id to answer)."""
    released: int = 0
    """Messages handed back to the queue (visibility 0) or left for redelivery."""
    unanswered: int = 0
    """Answers not delivered because their reply queue was gone (the web process waiting for them stopped)."""
    visibility_extensions: int = 0
    started_at: float = field(default_factory=time.time)

    @property
    def answered(self) -> int:
        return self.processed + self.errors

    def snapshot(self) -> dict[str, float | int]:
        return {**asdict(self), "answered": self.answered}
