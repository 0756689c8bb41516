"""The scaler companion in a deployment of several web processes: only the holder of the `scaler` lease opens a
fleet, it scales on the whole deployment's demand (the others' in-flight counts from their heartbeats), and the
others say they do not run the fleet."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import pytest
from fastapi import FastAPI

from facerec.adapters.memory import MemoryCoordination, MemoryReplyQueues
from facerec.ports import DataTier, Fleet
from facerec.scaler.service import NotLeading, ScalerService
from facerec.settings import Settings
from facerec.testing import memory_data_tier
from facerec.web.deployment import Deployment
from facerec.web.pending import PendingRequests
from tests.scaler.fakes import FakeFleet

SETTINGS = Settings(
    prefix="dep",
    max_workers=4,
    scale_in_grace_s=0.2,
    scaler_interval_s=0.05,
    web_heartbeat_s=0.2,
    lease_ttl_s=0.6,
)


def fleet_opener(fleet: FakeFleet) -> Callable[[Settings], AbstractAsyncContextManager[Fleet]]:
    @asynccontextmanager
    async def open_fleet(settings: Settings) -> AsyncIterator[Fleet]:
        try:
            yield fleet
        finally:
            await fleet.close()  # as the local fleet does: its workers stop with it

    return open_fleet


class Process:
    """One web process's part in this test: its deployment membership, pending requests and scaler service."""

    def __init__(self, data: DataTier, coordination: MemoryCoordination, replies: MemoryReplyQueues) -> None:
        self.fleet = FakeFleet(SETTINGS.max_workers or 1)
        self.service = ScalerService(SETTINGS, open_fleet=fleet_opener(self.fleet))
        self.app = FastAPI()
        self.app.state.pending = PendingRequests()
        self.app.state.metrics = None
        self.deployment = Deployment(
            SETTINGS,
            coordination,
            replies,
            data.responses,
            lambda: self.app.state.pending.in_flight,
        )
        self.app.state.deployment = self.deployment
        self._stack = AsyncExitStack()
        self._data = data

    async def start(self) -> None:
        await self.deployment.join()
        self._stack.push_async_callback(self.deployment.leave)
        await self._stack.enter_async_context(self.service.companion(self.app, self._data))

    async def stop(self) -> None:
        """A clean stop: the scaler companion, then the deployment membership (as the app's lifespan does)."""
        await self._stack.aclose()

    def wait_on(self, count: int) -> None:
        """`count` requests in flight in this process (registered, as the gateway does, never answered)."""
        pending: PendingRequests = self.app.state.pending
        for request_id in [f"r{n}" for n in range(count)]:
            pending.register(request_id)

    def answered(self) -> None:
        pending: PendingRequests = self.app.state.pending
        for request_id in [f"r{n}" for n in range(pending.in_flight)]:
            pending.discard(request_id)

    @property
    def leading(self) -> bool:
        return self.service.leadership is not None and self.service.leadership.leading


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def processes() -> AsyncIterator[list[Process]]:
    coordination, replies = MemoryCoordination(), MemoryReplyQueues(SETTINGS.prefix)
    async with AsyncExitStack() as stack:
        data = await stack.enter_async_context(memory_data_tier(SETTINGS))
        started: list[Process] = []
        for _ in range(2):
            process = Process(data, coordination, replies)
            await process.start()
            stack.push_async_callback(process.stop)
            started.append(process)
        yield started


async def test_only_the_lease_holder_runs_a_fleet_and_it_scales_on_the_others_demand(
    processes: list[Process],
) -> None:
    await until(lambda: any(p.leading for p in processes))
    leader, other = processes if processes[0].leading else processes[::-1]
    other.wait_on(3)  # requests waiting in the other process only
    await until(lambda: len(leader.fleet.workers) == 3)
    assert other.fleet.workers == {} and other.service.fleet is None
    with pytest.raises(NotLeading):
        await other.service.worker_states()  # /v1/workers: 404 there
    assert (await leader.service.worker_states()).running == 3
    other.answered()  # its heartbeat reports 0 at once; the leader scales in after the grace period
    await until(lambda: leader.fleet.workers == {})
    assert leader.fleet.peak_active == 3 and other.fleet.peak_active == 0


async def test_a_leader_that_stops_hands_the_fleet_over(processes: list[Process]) -> None:
    await until(lambda: any(p.leading for p in processes))
    leader, other = processes if processes[0].leading else processes[::-1]
    other.wait_on(2)
    await until(lambda: len(leader.fleet.workers) == 2)
    await leader.stop()  # released at once: the other takes over at its next attempt, not at expiry
    await until(lambda: other.leading)
    # The new leader opens its own fleet and scales on its own demand.
    await until(lambda: len(other.fleet.workers) == 2)
    assert leader.fleet.workers == {} and not leader.leading


async def test_the_last_process_to_stop_stops_the_workers_even_if_another_left_since_its_last_heartbeat(
    processes: list[Process], caplog: pytest.LogCaptureFixture
) -> None:
    """On EC2 workers left running cost money until a next leader adopts them; when the only other process has
    just left, no next leader comes: the stopping leader must see that, not its last heartbeat's member list."""
    await until(lambda: any(p.leading for p in processes))
    leader, other = processes if processes[0].leading else processes[::-1]
    leader.wait_on(2)
    await until(lambda: len(leader.fleet.workers) == 2 and len(leader.deployment.live_members) == 2)
    as_last_read = list(leader.deployment.live_members)
    await other.stop()  # a clean stop: it leaves the deployment
    leader.deployment.live_members = as_last_read  # the leader has not read the members since
    with caplog.at_level("INFO", logger="facerec.scaler.service"):
        await leader.stop()
    assert "workers_stopped_on_exit" in [r.getMessage() for r in caplog.records]
    assert leader.service.left_running == []


async def test_a_leader_that_stops_while_another_process_lives_leaves_the_workers_to_it(
    processes: list[Process], caplog: pytest.LogCaptureFixture
) -> None:
    await until(lambda: any(p.leading for p in processes))
    leader, _ = processes if processes[0].leading else processes[::-1]
    leader.wait_on(2)
    await until(lambda: len(leader.fleet.workers) == 2)
    with caplog.at_level("INFO", logger="facerec.scaler.service"):
        await leader.stop()
    assert "workers_stopped_on_exit" not in [r.getMessage() for r in caplog.records]
