"""What a person sees while workers start: `GET /v1/workers` and `timings.cold_start` in `/v1/recognitions`."""

from __future__ import annotations

from facerec.ports import WorkerInfo, WorkerState
from facerec.testing import jpeg_bytes
from tests.scaler.fakes import FakeFleet
from tests.web.harness import running_web, upload


async def test_workers_by_state_and_cold_start_in_the_timings() -> None:
    fleet = FakeFleet(max_workers=3)
    async with running_web(app_kwargs={"fleet": fleet}) as web:
        assert (await web.client.get("/v1/workers")).json() == {"running": 0, "starting": 0, "stopping": 0}
        cold = await web.client.post("/v1/recognitions", **upload(jpeg_bytes()))
        assert cold.status_code == 200 and cold.json()["timings"]["cold_start"] is True
        fleet.workers["w1"] = WorkerInfo("w1", "app-tier-instance-1", WorkerState.RUNNING)
        fleet.workers["w2"] = WorkerInfo("w2", "app-tier-instance-2", WorkerState.PENDING)
        fleet.workers["w3"] = WorkerInfo("w3", "app-tier-instance-3", WorkerState.STOPPING)
        assert (await web.client.get("/v1/workers")).json() == {"running": 1, "starting": 1, "stopping": 1}
        warm = await web.client.post("/v1/recognitions", **upload(jpeg_bytes()))
        assert warm.json()["timings"]["cold_start"] is False


async def test_without_a_fleet_the_state_is_unknown() -> None:
    async with running_web() as web:
        response = await web.client.get("/v1/workers")
        assert response.status_code == 404
        answer = await web.client.post("/v1/recognitions", **upload(jpeg_bytes()))
        assert answer.json()["timings"]["cold_start"] is None
