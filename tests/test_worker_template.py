"""Workers forked from the worker template (`FACEREC_WORKER_START=fork`): ready and answering, children of the
template, stopped promptly; a template that dies is replaced, one that cannot load falls back to spawn; and
torch in a forked child runs with its own thread pool (a pool inherited from the template would deadlock)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from facerec.adapters.local_fleet import LocalFleet
from facerec.backend import open_data_tier
from facerec.ports import WorkerInfo, WorkerState
from facerec.settings import Settings
from facerec.web.metrics import WebMetrics
from facerec.web.pending import PendingRequests
from tests.paths import REPO_ROOT
from tests.worker.fakes import collect, photo_of, submit

pytestmark = pytest.mark.slow

FAKE_FACTORY = "tests.worker.fakes:process_recognizer"
STANDIN_FACTORY = "tests.standin_model:standin_recognizer"


def fleet_env(factory: str, **more: str) -> dict[str, str]:
    return {
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "FACEREC_WORKER_RECOGNIZER_FACTORY": factory,
        **more,
    }


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        prefix="template-test",
        shutdown_grace_s=2.0,
        worker_poll_wait_s=0.5,
        worker_start="fork",
    )


@pytest.fixture
async def make_fleet(settings: Settings, tmp_path: Path) -> AsyncIterator[Callable[..., LocalFleet]]:
    fleets: list[LocalFleet] = []

    def make(factory: str = FAKE_FACTORY, max_workers: int = 2, **kwargs: object) -> LocalFleet:
        env = fleet_env(factory, **kwargs.pop("extra_env", {}))  # type: ignore[arg-type]
        fleet = LocalFleet(settings, max_workers=max_workers, env=env, log_dir=tmp_path / "logs", **kwargs)  # type: ignore[arg-type]
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        await fleet.close()


async def wait_for(fleet: LocalFleet, predicate: Callable[[list[WorkerInfo]], bool], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not predicate(await fleet.list()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s: {await fleet.list()}")
        await asyncio.sleep(0.02)


def running(count: int) -> Callable[[list[WorkerInfo]], bool]:
    return lambda workers: sum(w.state == WorkerState.RUNNING for w in workers) == count


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def thread_count(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Threads:")).split()[1])


def template_pid(fleet: LocalFleet) -> int:
    template = fleet._template
    assert template is not None and template.process is not None
    return template.process.pid


async def test_forked_workers_answer_and_stop(make_fleet: Callable[..., LocalFleet], settings: Settings) -> None:
    fleet = make_fleet()
    metrics = WebMetrics(PendingRequests())
    fleet.timing_listeners.append(metrics.observe_worker)
    await fleet.prepare()
    started = await fleet.start(2)
    assert {w.name for w in started} == {"app-tier-instance-1", "app-tier-instance-2"}
    await wait_for(fleet, running(2))
    pids = [int(w.worker_id.removeprefix("local-")) for w in await fleet.list()]
    assert [parent_of(pid) for pid in pids] == [template_pid(fleet)] * 2
    # Each its own session, as a spawned worker: its own process group to signal, its own CPU share (autogroup).
    assert [os.getsid(pid) for pid in pids] == pids
    async with open_data_tier(settings) as data:
        requests = [await submit(data, f"paul_{i}.jpg", photo_of("Paul")) for i in range(4)]
        responses = await collect(data, {r.id for r in requests}, within_s=30)
    assert {r.result.name for r in responses if r.result is not None} == {"Paul"}
    assert {r.worker for r in responses} <= {"app-tier-instance-1", "app-tier-instance-2"}
    await fleet.stop([w.worker_id for w in await fleet.list()])
    await wait_for(fleet, lambda workers: workers == [], within=20)
    exposition = generate_latest(metrics.registry).decode()
    assert 'facerec_worker_start_to_ready_seconds_count{start="fork"} 2.0' in exposition
    assert "facerec_worker_stop_seconds_count 2.0" in exposition


async def test_a_dead_template_is_replaced(
    make_fleet: Callable[..., LocalFleet], caplog: pytest.LogCaptureFixture
) -> None:
    fleet = make_fleet(max_workers=1)
    await fleet.start(1)
    await wait_for(fleet, running(1))
    first_template = template_pid(fleet)
    os.kill(first_template, signal.SIGKILL)
    # Its worker gets SIGTERM from its parent-death signal, releases what it holds and exits.
    await wait_for(fleet, lambda workers: workers == [], within=20)
    with caplog.at_level(logging.INFO, logger="facerec.adapters.local_fleet"):
        await fleet.start(1)
        await wait_for(fleet, running(1))
    assert "template_died" in [record.message for record in caplog.records]
    assert template_pid(fleet) != first_template
    [worker] = fleet._workers
    assert worker.how == "fork" and parent_of(worker.process.pid) == template_pid(fleet)


async def test_a_template_that_cannot_load_falls_back_to_spawn(
    make_fleet: Callable[..., LocalFleet], caplog: pytest.LogCaptureFixture
) -> None:
    broken = [sys.executable, "-c", "raise SystemExit(3)"]
    fleet = make_fleet(max_workers=1, template_command=broken)
    with caplog.at_level(logging.INFO, logger="facerec.adapters.local_fleet"):
        await fleet.start(1)
        await wait_for(fleet, running(1))
    assert "worker_start_fallback" in [record.message for record in caplog.records]
    [worker] = fleet._workers
    assert worker.how == "spawn"


@pytest.mark.timeout(180)
async def test_forked_torch_workers_run_with_their_own_threads(
    make_fleet: Callable[..., LocalFleet], settings: Settings
) -> None:
    # Two intra-op threads per child: the child's warm-up (before it is ready) enters an OpenMP parallel
    # region, which hangs forever if the template had started a pool the child inherited half-alive.
    fleet = make_fleet(STANDIN_FACTORY, max_workers=1, extra_env={"FACEREC_TORCH_THREADS": "2"})
    await fleet.start(1)
    await wait_for(fleet, running(1), within=150)
    # The template itself stays single-threaded: no OpenMP (or any other) pool for a child to inherit.
    assert thread_count(template_pid(fleet)) == 1
    async with open_data_tier(settings) as data:
        request = await submit(data, "paul.jpg", photo_of("Paul"))
        [response] = await collect(data, {request.id}, within_s=60)
    assert response.error is None and response.result is not None


async def test_a_busy_forked_worker_finishes_its_batch_when_stopped(
    make_fleet: Callable[..., LocalFleet], settings: Settings, tmp_path: Path
) -> None:
    marker = tmp_path / "batch-started"
    slow = {"FAKE_RECOGNIZER_DELAY_S": "0.3", "FAKE_RECOGNIZER_BATCH_FILE": str(marker)}
    fleet = make_fleet(max_workers=1, extra_env=slow)
    await fleet.start(1)
    await wait_for(fleet, running(1))
    async with open_data_tier(settings) as data:
        requests = [await submit(data, f"paul_{i}.jpg", photo_of("Paul")) for i in range(3)]
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, "the worker never started its batch"
            await asyncio.sleep(0.02)
        await fleet.stop([w.worker_id for w in await fleet.list()])  # SIGTERM in the middle of the batch
        responses = await collect(data, {r.id for r in requests}, within_s=30)
        stats = await data.requests.stats()
    assert sorted(r.result.name for r in responses if r.result is not None) == ["Paul"] * 3
    assert (stats.visible, stats.in_flight) == (0, 0)  # answered and deleted, nothing released for later
    await wait_for(fleet, lambda workers: workers == [], within=20)
