"""A clean stop of `facerec serve` stops every running worker through the Fleet port (EC2 instances cost money
while idle), unless the settings say to leave them; either way it knows what it left running."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from facerec.ports import Fleet, PortError
from facerec.scaler.service import ScalerService
from facerec.settings import Settings
from facerec.testing import memory_data_tier
from facerec.web.app import create_app
from tests.scaler.fakes import FakeFleet


class RecordingFleet(FakeFleet):
    def __init__(self) -> None:
        super().__init__(max_workers=3)
        self.stopped: list[str] = []

    async def stop(self, worker_ids: Sequence[str]) -> None:
        await super().stop(worker_ids)
        self.stopped.extend(worker_ids)


async def run_and_stop(fleet: RecordingFleet, **overrides: object) -> ScalerService:
    # Two workers the scaler keeps (min_workers): only the stop can scale in.
    settings = Settings(min_workers=2, max_workers=3, web_poll_wait_s=0.2, **overrides)  # type: ignore[arg-type]

    @asynccontextmanager
    async def open_fleet(_: Settings) -> AsyncIterator[Fleet]:
        yield fleet

    service = ScalerService(settings, open_fleet)
    app = create_app(settings, memory_data_tier, worker_count=service.worker_count, companions=[service.companion])
    async with app.router.lifespan_context(app):
        deadline = time.monotonic() + 10
        while len(await fleet.list()) < 2:
            assert time.monotonic() < deadline, "the scaler did not start the minimum"
            await asyncio.sleep(0.01)
    return service


async def test_a_clean_stop_stops_every_running_worker() -> None:
    fleet = RecordingFleet()
    service = await run_and_stop(fleet)
    assert sorted(fleet.stopped) == ["w1", "w2"]
    assert service.left_running == []


async def test_leave_workers_keeps_them_and_lists_them() -> None:
    fleet = RecordingFleet()
    service = await run_and_stop(fleet, stop_workers_on_exit=False)
    assert fleet.stopped == []
    assert [w.name for w in service.left_running] == ["app-tier-instance-1", "app-tier-instance-2"]


async def test_a_failed_stop_is_reported_as_left_running() -> None:
    class FailingStop(RecordingFleet):
        async def stop(self, worker_ids: Sequence[str]) -> None:
            raise PortError("StopInstances refused")

    service = await run_and_stop(FailingStop())
    assert len(service.left_running) == 2
