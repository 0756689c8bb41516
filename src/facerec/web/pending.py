"""The futures registry: one Future per request awaiting its worker answer, keyed by request id.

Its size is the exact number of requests in flight, which the overload guard and the scaler read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from facerec.messages import RecognitionResponse


class PendingRequests:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._futures: dict[str, asyncio.Future[RecognitionResponse]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._clock = clock
        self._listeners: list[Callable[[], None]] = []
        self.last_answer_by_worker: dict[str, float] = {}
        """Worker name -> when (clock time) it last answered one of our requests: scale-in stops the idlest."""

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` whenever a request is registered (the scaler wakes at once, not at its next tick)."""
        self._listeners.append(listener)

    @property
    def in_flight(self) -> int:
        return len(self._futures)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._futures

    def register(self, request_id: str) -> asyncio.Future[RecognitionResponse]:
        if request_id in self._futures:
            raise KeyError(f"request {request_id} is already pending")
        future: asyncio.Future[RecognitionResponse] = asyncio.get_running_loop().create_future()
        self._futures[request_id] = future
        self._idle.clear()
        for listener in self._listeners:
            listener()
        return future

    def resolve(self, response: RecognitionResponse) -> bool:
        """Hand a worker's answer to its waiter. False for an unknown id (late, or after a restart) or a
        duplicate delivery: the caller acknowledges and drops those."""
        if response.worker:
            self.last_answer_by_worker[response.worker] = self._clock()
        future = self._futures.get(response.id)
        if future is None or future.done():
            return False
        future.set_result(response)
        return True

    def fail(self, request_id: str, error: BaseException) -> bool:
        future = self._futures.get(request_id)
        if future is None or future.done():
            return False
        future.set_exception(error)
        return True

    def discard(self, request_id: str) -> None:
        """Forget a request (answered, timed out or abandoned by its client)."""
        future = self._futures.pop(request_id, None)
        if future is not None and not future.done():
            future.cancel()
        if not self._futures:
            self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight; False if requests remain after `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        return not self._futures
