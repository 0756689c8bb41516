"""The scaler as a web-tier companion: it runs in the web process, reads the exact in-flight count from the
web tier's futures registry and applies the policy through a Fleet opened for the app's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from facerec.logs import error_text
from facerec.ports import DataTier, Fleet, PortError, WorkerInfo, WorkerState
from facerec.scaler.loop import Scaler
from facerec.scaler.policy import ScalingConfig
from facerec.settings import Settings
from facerec.web.api import WorkersOut

log = logging.getLogger(__name__)

STATES_TTL_S = 0.5

FleetOpener = Callable[[Settings], AbstractAsyncContextManager[Fleet]]


def scaling_config(settings: Settings) -> ScalingConfig:
    max_workers = settings.max_workers if settings.max_workers is not None else 1
    return ScalingConfig(
        min_workers=min(settings.min_workers, max_workers),
        max_workers=max_workers,
        target_in_flight_per_worker=settings.target_in_flight_per_worker,
        stop_pending=settings.backend == "local",
        keep_warm_s=settings.keep_warm_s,
        min_run_s=settings.min_run_s,
    )


def _default_fleet_opener(settings: Settings) -> AbstractAsyncContextManager[Fleet]:
    from facerec.fleets import open_fleet

    return open_fleet(settings)


class ScalerService:
    """`create_app(..., worker_count=service.worker_count, companions=[service.companion])`.

    The fleet is opened when the app starts and closed (workers stopped) when it stops, after the web tier
    has drained its in-flight requests.
    """

    def __init__(self, settings: Settings, open_fleet: FleetOpener | None = None) -> None:
        self.settings = settings
        self._open_fleet = open_fleet or _default_fleet_opener
        self.fleet: Fleet | None = None
        self.left_running: list[WorkerInfo] = []
        """After a stop: the workers still running (a failed stop, or `stop_workers_on_exit` off)."""
        self._states: tuple[float, WorkersOut] | None = None
        self._states_read: asyncio.Future[WorkersOut] | None = None

    async def worker_states(self) -> WorkersOut:
        """Workers by state, for /v1/workers, the page and `timings.cold_start` (none before the fleet is
        open). Read at most every STATES_TTL_S and shared by concurrent callers: every recognition asks, and
        on AWS a fleet read is a DescribeInstances call."""
        cached = self._states
        if cached is not None and time.monotonic() - cached[0] < STATES_TTL_S:
            return cached[1]
        if self._states_read is None or self._states_read.done():
            self._states_read = asyncio.ensure_future(self._read_states())
        return await asyncio.shield(self._states_read)

    async def _read_states(self) -> WorkersOut:
        from facerec.web.app import count_states

        states = count_states(await self.fleet.list() if self.fleet is not None else [])
        self._states = (time.monotonic(), states)
        return states

    async def worker_count(self) -> int:
        """Workers running or starting, for /metrics (0 before the fleet is open)."""
        if self.fleet is None:
            return 0
        workers = await self.fleet.list()
        return sum(1 for w in workers if w.state in (WorkerState.PENDING, WorkerState.RUNNING))

    @asynccontextmanager
    async def companion(self, app: FastAPI, data: DataTier) -> AsyncIterator[Scaler]:
        pending = app.state.pending
        async with self._open_fleet(self.settings) as fleet:
            scaler = Scaler(
                fleet,
                scaling_config(self.settings),
                lambda: pending.in_flight,
                request_queue=data.requests,
                last_active=lambda: pending.last_answer_by_worker,
                scale_in_grace_s=self.settings.scale_in_grace_s,
                interval_s=self.settings.scaler_interval_s,
            )
            pending.add_listener(scaler.notify)
            metrics = getattr(app.state, "metrics", None)
            listeners = getattr(fleet, "timing_listeners", None)
            if metrics is not None and isinstance(listeners, list):
                listeners.append(metrics.observe_worker)  # worker start/stop histograms in /metrics
            self.fleet = fleet
            task = asyncio.create_task(scaler.run(), name="facerec-scaler")
            log.info("scaler_started", extra={"max_workers": scaler.config.max_workers})
            try:
                yield scaler
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                self.fleet = None
                self.left_running = await self._stop_all(fleet)
                log.info("scaler_stopped")

    async def _stop_all(self, fleet: Fleet) -> list[WorkerInfo]:
        """On a clean stop: scale to zero (EC2 instances cost money while nobody uses them) unless the settings
        say to leave them; returns the workers left running either way."""
        active: list[WorkerInfo] = []
        try:
            active = [w for w in await fleet.list() if w.state in (WorkerState.PENDING, WorkerState.RUNNING)]
            if active and self.settings.stop_workers_on_exit:
                await fleet.stop([w.worker_id for w in active])
                log.info("workers_stopped_on_exit", extra={"workers": [w.name for w in active]})
                return []
        except PortError as exc:
            log.error("stop_workers_failed", extra={"error": error_text(exc)})
            return active
        if active:
            log.warning("workers_left_running", extra={"workers": [w.name for w in active]})
        return active
