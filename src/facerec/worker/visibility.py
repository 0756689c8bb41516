"""Keep the messages a worker holds invisible to other workers for as long as it is working on them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from facerec.logs import error_text
from facerec.ports import MessageQueue, PortError
from facerec.worker.stats import WorkerStats

log = logging.getLogger(__name__)


class InHand:
    """The receipts a worker holds, each with the time its visibility was last set.

    A background task (`run`) extends every receipt whose visibility is older than `extend_after` of the
    timeout, so a slow batch (or a prefetched batch waiting for its turn) is never redelivered to another
    worker while this one is still alive. When the worker dies, extensions stop and the queue redelivers.
    """

    def __init__(
        self,
        queue: MessageQueue,
        visibility_timeout_s: float,
        stats: WorkerStats | None = None,
        extend_after: float = 0.5,
    ) -> None:
        self._queue = queue
        self.visibility_timeout_s = visibility_timeout_s
        self._extend_after_s = visibility_timeout_s * extend_after
        self._stats = stats or WorkerStats()
        self._since: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._since)

    def add(self, receipts: Iterable[str]) -> None:
        now = time.monotonic()
        self._since.update(dict.fromkeys(receipts, now))

    def discard(self, receipts: Iterable[str]) -> None:
        for receipt in receipts:
            self._since.pop(receipt, None)

    def receipts(self) -> list[str]:
        return list(self._since)

    async def extend_due(self) -> int:
        """Extend the receipts due for it; returns how many were extended."""
        now = time.monotonic()
        due = [receipt for receipt, since in self._since.items() if now - since >= self._extend_after_s]
        if not due:
            return 0
        await self._queue.change_visibility(due, self.visibility_timeout_s)
        for receipt in due:
            if receipt in self._since:  # not finished while we were extending
                self._since[receipt] = now
        self._stats.visibility_extensions += len(due)
        log.debug("visibility_extended", extra={"count": len(due), "timeout_s": self.visibility_timeout_s})
        return len(due)

    async def run(self) -> None:
        """Until cancelled: extend what is due, checking several times per extension period."""
        tick = max(0.01, self._extend_after_s / 4)
        while True:
            await asyncio.sleep(tick)
            try:
                await self.extend_due()
            except PortError as exc:
                # Transient: the next tick retries; at worst the messages are redelivered (at-least-once).
                log.warning("visibility_extend_failed", extra={"error": error_text(exc)})

    async def release_all(self) -> int:
        """Hand every held message back to the queue at once (visibility 0), e.g. on shutdown."""
        receipts = self.receipts()
        if receipts:
            try:
                await self._queue.change_visibility(receipts, 0)
            except PortError as exc:
                # They still come back, only later: when their visibility timeout runs out.
                log.warning("release_failed", extra={"count": len(receipts), "error": error_text(exc)})
            self._stats.released += len(receipts)
            self.discard(receipts)
        return len(receipts)
