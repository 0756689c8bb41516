"""The thin asyncio loop around the scaling policy: observe, decide, apply through the Fleet port.

Runs as a task in the web process. It wakes at once when a request arrives (`notify()`), so an idle
system starts its first worker without waiting for a tick, and otherwise every `interval_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from facerec.ports import Fleet, MessageQueue, WorkerInfo, WorkerState
from facerec.scaler.policy import Observation, ScalingConfig, active_workers, desired_workers, workers_to_stop

log = logging.getLogger(__name__)


class LoadWindow:
    """The peak load over the last `span_s` seconds."""

    def __init__(self, span_s: float) -> None:
        self.span_s = span_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, load: int) -> None:
        # A monotonic deque: older samples no larger than the new one can never be the peak again.
        while self._samples and self._samples[-1][1] <= load:
            self._samples.pop()
        self._samples.append((now, load))

    def peak(self, now: float) -> int:
        while self._samples and self._samples[0][0] < now - self.span_s:
            self._samples.popleft()
        return self._samples[0][1] if self._samples else 0


@dataclass(frozen=True, slots=True)
class ScalingStep:
    observation: Observation
    active: int
    desired: int
    started: int
    stopped: int
    stopping: int = 0
    """Workers still on their way to `stopped` (not active; on EC2 they cannot be started again yet)."""


class Scaler:
    def __init__(
        self,
        fleet: Fleet,
        config: ScalingConfig,
        in_flight: Callable[[], int],
        *,
        request_queue: MessageQueue | None = None,
        last_active: Callable[[], Mapping[str, float]] | None = None,
        scale_in_grace_s: float = 1.0,
        interval_s: float = 0.2,
        queue_poll_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet = fleet
        self.config = config
        self._in_flight = in_flight
        self._request_queue = request_queue
        self._last_active = last_active
        self._window = LoadWindow(scale_in_grace_s)
        self._interval_s = interval_s
        self._queue_poll_s = queue_poll_s
        self._clock = clock
        self._wake = asyncio.Event()
        self._queue_depth = 0
        self._queue_polled_at = float("-inf")
        self._running_since: dict[str, float] = {}
        self.last_step: ScalingStep | None = None

    def notify(self) -> None:
        """Something changed (a request arrived): decide now rather than at the next tick."""
        self._wake.set()

    async def _observe(self, now: float) -> Observation:
        # Queue attributes are a remote call on SQS: poll them less often than the in-process count.
        if self._request_queue is not None and now - self._queue_polled_at >= self._queue_poll_s:
            self._queue_polled_at = now
            self._queue_depth = (await self._request_queue.stats()).visible
        in_flight = self._in_flight()
        self._window.add(now, max(in_flight, self._queue_depth))
        return Observation(in_flight, self._queue_depth, self._window.peak(now))

    def _track_running(self, now: float, workers: list[WorkerInfo]) -> None:
        # When each worker was first seen running, on the scaler's clock: keep-warm counts a silent worker's
        # idleness from then (EC2 bills from `running`; its LaunchTime is wall-clock, and for a pool instance
        # the first launch ever).
        ids = {w.worker_id for w in workers if w.state == WorkerState.RUNNING}
        self._running_since = {i: t for i, t in self._running_since.items() if i in ids}
        for worker_id in ids:
            self._running_since.setdefault(worker_id, now)

    async def step(self) -> ScalingStep:
        """One observe-decide-act round."""
        now = self._clock()
        observation = await self._observe(now)
        workers = await self.fleet.list()
        active = active_workers(workers)
        self._track_running(now, workers)
        stopping = sum(1 for w in workers if w.state == WorkerState.STOPPING)
        desired = desired_workers(observation, self.config)
        started = stopped = 0
        if desired > len(active):
            started = len(await self.fleet.start(desired - len(active)))
        elif desired < len(active):
            last_active = self._last_active() if self._last_active else None
            victims = workers_to_stop(
                workers,
                len(active) - desired,
                last_active,
                config=self.config,
                now=now,
                active_since=self._running_since,
            )
            if victims:
                await self.fleet.stop([w.worker_id for w in victims])
            stopped = len(victims)
        step = ScalingStep(observation, len(active), desired, started, stopped, stopping)
        if started or stopped:
            log.info(
                "scaled",
                extra={
                    "in_flight": observation.in_flight,
                    "queue_depth": observation.queue_depth,
                    "active": len(active),
                    "desired": desired,
                    "started": started,
                    "stopped": stopped,
                    "stopping": stopping,
                },
            )
        self.last_step = step
        return step

    async def run(self) -> None:
        """Until cancelled. Fleet errors are logged and retried with backoff; they never end the loop."""
        backoff = self._interval_s
        while True:
            self._wake.clear()
            try:
                await self.step()
                backoff = self._interval_s
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scaling_failed", extra={"retry_in_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval_s)
