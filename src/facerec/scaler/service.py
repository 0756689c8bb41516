"""The scaler as a web-tier companion: it runs in the web process, reads the exact in-flight count from the
web tier's futures registry and applies the policy through a Fleet opened for the app's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from facerec.logs import error_text
from facerec.ports import DataTier, Fleet, PortError, WorkerInfo, WorkerState
from facerec.scaler.leadership import SCALER_LEASE, Leadership
from facerec.scaler.loop import Scaler
from facerec.scaler.policy import ScalingConfig
from facerec.settings import Settings
from facerec.web.api import WorkersOut
from facerec.web.deployment import Deployment

log = logging.getLogger(__name__)

STATES_TTL_S = 0.5
MEMBERS_AT_STOP_TIMEOUT_S = 5.0
"""How long a stopping leader waits to learn whether other web processes are still live (else: as last known)."""


class NotLeading(LookupError):
    """This web process does not hold the `scaler` lease (another one runs the fleet)."""


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
        self.scaler: Scaler | None = None
        self.leadership: Leadership | None = None
        """In a deployment of several web processes: who runs the scaler (None for a lone process)."""
        self._stopping = False
        self._states: tuple[float, WorkersOut] | None = None
        self._states_read: asyncio.Future[WorkersOut] | None = None

    async def worker_states(self) -> WorkersOut:
        """Workers by state, for /v1/workers, the page and `timings.cold_start` (none before the fleet is
        open). Read at most every STATES_TTL_S and shared by concurrent callers: every recognition asks, and
        on AWS a fleet read is a DescribeInstances call."""
        if self.leadership is not None and not self.leadership.leading:
            raise NotLeading("this web process does not run the scaler: the workers' state is the leader's")
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
    async def companion(self, app: FastAPI, data: DataTier) -> AsyncIterator[None]:
        """A lone web process (no `app.state.deployment`: tests' data tiers) runs the scaler for its whole life,
        as it always has. In a deployment, the scaler runs only while this process holds the `scaler` lease."""
        pending = app.state.pending
        # One listener for every term: a request wakes whichever scaler runs now.
        pending.add_listener(lambda: self.scaler.notify() if self.scaler is not None else None)
        deployment: Deployment | None = getattr(app.state, "deployment", None)
        if deployment is None:
            async with self._term(app, data, lambda: pending.in_flight, stop_workers=_always):
                yield
            return

        def demand() -> int:
            # Exact for this process; the others' as of their last heartbeat (immediate on 0 <-> non-0).
            return int(pending.in_flight + deployment.others_in_flight())

        async def last_live_process() -> bool:
            if not self._stopping:
                return False
            # Read now, not as of the last heartbeat: a process that left a moment ago would otherwise still count,
            # and the instances would be left running for a next leader that never comes.
            try:
                async with asyncio.timeout(MEMBERS_AT_STOP_TIMEOUT_S):
                    await deployment.read_members()
            except (PortError, TimeoutError) as exc:
                log.warning("members_unreadable_at_stop", extra={"error": error_text(exc)})
            return len(deployment.live_members) <= 1

        @asynccontextmanager
        async def term() -> AsyncIterator[None]:
            deployment.fresh_members = True
            try:
                # Only the clean stop of the last live web process stops the workers: a demoted leader, or one
                # stopping while others run, leaves them to the next leader, who adopts them (EC2: they are state
                # in EC2); local workers are this process's children and end when its fleet closes either way.
                async with self._term(app, data, demand, stop_workers=last_live_process):
                    yield
            finally:
                deployment.fresh_members = False

        self.leadership = Leadership(
            deployment.coordination, deployment.web_id, self.settings.lease_ttl_s, term, name=SCALER_LEASE
        )
        app.state.leadership = self.leadership
        task = asyncio.create_task(self.leadership.run(), name="facerec-scaler-leadership")
        try:
            yield
        finally:
            self._stopping = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @asynccontextmanager
    async def _term(
        self,
        app: FastAPI,
        data: DataTier,
        in_flight: Callable[[], int],
        stop_workers: Callable[[], Awaitable[bool]],
    ) -> AsyncIterator[None]:
        """Open the fleet and run the scaler on it; on exit stop the scaler, the workers when `stop_workers()`
        says so, then close the fleet."""
        pending = app.state.pending
        async with self._open_fleet(self.settings) as fleet:
            scaler = Scaler(
                fleet,
                scaling_config(self.settings),
                in_flight,
                request_queue=data.requests,
                last_active=lambda: pending.last_answer_by_worker,
                scale_in_grace_s=self.settings.scale_in_grace_s,
                interval_s=self.settings.scaler_interval_s,
            )
            metrics = getattr(app.state, "metrics", None)
            listeners = getattr(fleet, "timing_listeners", None)
            if metrics is not None and isinstance(listeners, list):
                listeners.append(metrics.observe_worker)  # worker start/stop histograms in /metrics
            self.fleet, self.scaler = fleet, scaler
            task = asyncio.create_task(scaler.run(), name="facerec-scaler")
            log.info("scaler_started", extra={"max_workers": scaler.config.max_workers})
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                self.fleet = self.scaler = None
                self._states = None
                if await stop_workers():
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


async def _always() -> bool:
    """A lone web process (no deployment) always stops its workers on a clean stop."""
    return True
