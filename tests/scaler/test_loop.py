from __future__ import annotations

import asyncio

import pytest

from facerec.adapters.memory import MemoryQueue
from facerec.scaler.loop import LoadWindow, Scaler
from facerec.scaler.policy import ScalingConfig
from tests.scaler.fakes import FakeFleet


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_load_window_tracks_peak_over_span() -> None:
    window = LoadWindow(span_s=1.0)
    window.add(0.0, 5)
    window.add(0.5, 2)
    assert window.peak(0.9) == 5
    assert window.peak(1.2) == 2
    assert window.peak(2.0) == 0


async def test_burst_scales_to_exactly_max_then_back_to_zero_after_grace() -> None:
    fleet = FakeFleet(max_workers=15)
    clock = ManualClock()
    in_flight = {"n": 0}
    scaler = Scaler(fleet, ScalingConfig(max_workers=15), lambda: in_flight["n"], scale_in_grace_s=1.0, clock=clock)
    in_flight["n"] = 100
    step = await scaler.step()
    assert (step.desired, step.started) == (15, 15)
    assert fleet.peak_active == 15

    in_flight["n"] = 0
    clock.now += 0.5
    assert (await scaler.step()).stopped == 0  # within grace: no flapping
    clock.now += 0.6
    step = await scaler.step()
    assert step.stopped == 15
    assert fleet.workers == {}
    assert fleet.peak_active == 15


async def test_queue_depth_alone_starts_workers() -> None:
    fleet = FakeFleet(max_workers=4)
    queue = MemoryQueue()
    await queue.send_batch(["a", "b", "c"])
    scaler = Scaler(fleet, ScalingConfig(max_workers=4), lambda: 0, request_queue=queue)
    assert (await scaler.step()).desired == 3


async def test_recovers_view_from_the_fleet_after_restart() -> None:
    fleet = FakeFleet(max_workers=5)
    await fleet.start(3)
    # A new scaler (after a web restart) with load for two: it sees the three and stops one.
    scaler = Scaler(fleet, ScalingConfig(max_workers=5), lambda: 2, scale_in_grace_s=0.0)
    step = await scaler.step()
    assert (step.active, step.desired, step.stopped) == (3, 2, 1)


async def _wait_for(condition, seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_run_wakes_immediately_on_notify() -> None:
    fleet = FakeFleet(max_workers=2)
    in_flight = {"n": 0}
    scaler = Scaler(fleet, ScalingConfig(max_workers=2), lambda: in_flight["n"], interval_s=30.0)
    task = asyncio.create_task(scaler.run())
    try:
        assert await _wait_for(lambda: scaler.last_step is not None)
        in_flight["n"] = 1
        scaler.notify()  # without it the next tick would be 30 s away
        assert await _wait_for(lambda: len(fleet.workers) == 1, seconds=2.0)
    finally:
        await _stop(task)


async def test_run_survives_fleet_failures_and_retries() -> None:
    fleet = FakeFleet(max_workers=2)
    fleet.fail_next = 3
    scaler = Scaler(fleet, ScalingConfig(max_workers=2), lambda: 2, interval_s=0.01)
    task = asyncio.create_task(scaler.run())
    try:
        assert await _wait_for(lambda: len(fleet.workers) == 2)
        assert fleet.fail_next == 0
        assert not task.done()
    finally:
        await _stop(task)
