"""The scaler inside the web app: workers start on the first request, reach exactly the maximum under a burst,
and go back to 0 one grace period after the last answer; workers only answer while the fleet runs them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from facerec.messages import parse_request
from facerec.ports import DataTier, Fleet, WorkerInfo
from facerec.scaler.service import ScalerService
from facerec.settings import Settings
from facerec.testing import answer_by_digest, jpeg_bytes, memory_data_tier
from facerec.web.app import create_app
from tests.scaler.fakes import FakeFleet


class FleetGatedWorker:
    """Answers requests only while the fleet has a running worker, named after one of them."""

    def __init__(self, data: DataTier, fleet: FakeFleet, service_time_s: float) -> None:
        self._data, self._fleet, self._service_time_s = data, fleet, service_time_s
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FleetGatedWorker:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            running = list(self._fleet.workers.values())
            if not running:
                await asyncio.sleep(0.01)
                continue
            messages = await self._data.requests.receive(max_messages=10, wait_seconds=0.05)
            for index, message in enumerate(messages):
                await asyncio.sleep(self._service_time_s)
                request = parse_request(message.body)
                answer = answer_by_digest(request, await self._data.inputs.get(request.input_key))
                response = answer.model_copy(update={"worker": running[index % len(running)].name})
                await self._data.responses.send(response.to_json())
                await self._data.requests.delete_batch([message.receipt])


def settings(**overrides: object) -> Settings:
    base: dict[str, object] = {
        "max_workers": 5,
        "scale_in_grace_s": 0.3,
        "scaler_interval_s": 0.05,
        "web_poll_wait_s": 0.2,
        "request_deadline_s": 10.0,
        "shutdown_grace_s": 1.0,
    }
    return Settings(**{**base, **overrides})


@asynccontextmanager
async def served(fleet: FakeFleet, config: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    @asynccontextmanager
    async def open_fleet(_: Settings) -> AsyncIterator[Fleet]:
        yield fleet

    service = ScalerService(config, open_fleet)

    def worker(app: FastAPI, data: DataTier) -> FleetGatedWorker:
        return FleetGatedWorker(data, fleet, service_time_s=0.01)

    app = create_app(
        config, memory_data_tier, worker_count=service.worker_count, companions=[service.companion, worker]
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost", timeout=30) as client:
            yield app, client


async def post(client: httpx.AsyncClient, n: int) -> httpx.Response:
    return await client.post(
        "/", files={"inputFile": (f"img_{n}.jpg", jpeg_bytes(color=(n % 256, 80, 40)), "image/jpeg")}
    )


async def test_idle_service_runs_no_workers_and_first_request_starts_one() -> None:
    fleet = FakeFleet(max_workers=5)
    async with served(fleet, settings()) as (_, client):
        await asyncio.sleep(0.2)
        assert fleet.workers == {}
        response = await post(client, 1)
        assert response.status_code == 200, response.text
        assert response.text.startswith("img_1:person-")
        assert fleet.peak_active == 1


async def test_burst_reaches_exactly_the_maximum_then_zero_after_grace() -> None:
    fleet = FakeFleet(max_workers=5)
    async with served(fleet, settings()) as (app, client):
        responses = await asyncio.gather(*(post(client, n) for n in range(40)))
        answered_at = time.monotonic()
        assert [r.status_code for r in responses] == [200] * 40
        assert fleet.peak_active == 5
        while fleet.workers:
            await asyncio.sleep(0.01)
            assert time.monotonic() - answered_at < 2.0, "did not scale to 0 within 2 s of the last answer"
        metrics = (await client.get("/metrics")).text
        assert "facerec_workers 0.0" in metrics
        assert app.state.pending.last_answer_by_worker, "scale-in should know which workers answered last"


async def test_scaler_stops_with_the_app() -> None:
    fleet = FakeFleet(max_workers=2)
    async with served(fleet, settings()) as (_, client):
        assert (await post(client, 7)).status_code == 200
        task_names = {t.get_name() for t in asyncio.all_tasks()}
        assert "facerec-scaler" in task_names
    assert "facerec-scaler" not in {t.get_name() for t in asyncio.all_tasks() if not t.done()}


async def test_worker_states_are_read_once_for_concurrent_callers() -> None:
    """Every recognition asks for the workers' states: one fleet read (a DescribeInstances on AWS) serves them."""
    fleet = FakeFleet(max_workers=2)
    await fleet.start(1)
    reads = 0
    original = fleet.list

    async def counted() -> list[WorkerInfo]:
        nonlocal reads
        reads += 1
        return await original()

    fleet.list = counted  # type: ignore[method-assign]
    service = ScalerService(Settings())
    service.fleet = fleet
    states = await asyncio.gather(*(service.worker_states() for _ in range(20)))
    assert {(s.running, s.starting, s.stopping) for s in states} == {(1, 0, 0)}
    assert reads == 1
