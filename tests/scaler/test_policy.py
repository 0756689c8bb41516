from __future__ import annotations

import pytest

from facerec.ports import WorkerInfo, WorkerState
from facerec.scaler.policy import (
    Observation,
    ScalingConfig,
    active_workers,
    desired_workers,
    workers_to_stop,
)

COURSE = ScalingConfig(min_workers=0, max_workers=15, target_in_flight_per_worker=1.0)


def obs(in_flight: int = 0, queue_depth: int = 0, peak: int = 0) -> Observation:
    return Observation(in_flight=in_flight, queue_depth=queue_depth, recent_peak_load=peak)


def test_idle_system_wants_no_workers() -> None:
    assert desired_workers(obs(), COURSE) == 0


def test_first_request_starts_a_worker() -> None:
    assert desired_workers(obs(in_flight=1, peak=1), COURSE) == 1


def test_burst_of_100_asks_for_exactly_the_maximum() -> None:
    assert desired_workers(obs(in_flight=100, queue_depth=100, peak=100), COURSE) == 15


def test_never_exceeds_maximum_nor_goes_below_minimum() -> None:
    config = ScalingConfig(min_workers=2, max_workers=4)
    assert desired_workers(obs(in_flight=10_000), config) == 4
    assert desired_workers(obs(), config) == 2


def test_queue_depth_counts_when_in_flight_is_unknown_to_this_process() -> None:
    # Requests left in the queue by a restarted web process still need workers.
    assert desired_workers(obs(in_flight=0, queue_depth=7, peak=7), COURSE) == 7


def test_lull_under_steady_load_keeps_workers_until_peak_leaves_window() -> None:
    # The in-flight count dips between requests; the window's peak holds the decision steady.
    assert desired_workers(obs(in_flight=1, peak=8), COURSE) == 8
    assert desired_workers(obs(in_flight=0, peak=0), COURSE) == 0


@pytest.mark.parametrize(("load", "target", "expected"), [(10, 4.0, 3), (8, 4.0, 2), (1, 4.0, 1), (0, 4.0, 0)])
def test_target_requests_per_worker_rounds_up(load: int, target: float, expected: int) -> None:
    config = ScalingConfig(max_workers=15, target_in_flight_per_worker=target)
    assert desired_workers(obs(in_flight=load, peak=load), config) == expected


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ValueError, match="min_workers"):
        ScalingConfig(min_workers=3, max_workers=2)
    with pytest.raises(ValueError, match="target"):
        ScalingConfig(target_in_flight_per_worker=0)


def worker(n: int, state: WorkerState, launched_at: float = 0.0) -> WorkerInfo:
    return WorkerInfo(worker_id=f"w{n}", name=f"app-tier-instance-{n}", state=state, launched_at=launched_at)


def test_stopping_and_stopped_workers_do_not_count_as_active() -> None:
    workers = [
        worker(1, WorkerState.RUNNING),
        worker(2, WorkerState.PENDING),
        worker(3, WorkerState.STOPPING),
        worker(4, WorkerState.STOPPED),
    ]
    assert [w.worker_id for w in active_workers(workers)] == ["w1", "w2"]


def test_scale_in_stops_pending_then_idlest_workers_first() -> None:
    workers = [
        worker(1, WorkerState.RUNNING, launched_at=1),
        worker(2, WorkerState.RUNNING, launched_at=2),
        worker(3, WorkerState.PENDING, launched_at=3),
        worker(4, WorkerState.RUNNING, launched_at=4),
        worker(5, WorkerState.STOPPED),
    ]
    last_active = {"app-tier-instance-1": 100.0, "app-tier-instance-2": 50.0, "app-tier-instance-4": 200.0}
    chosen = workers_to_stop(workers, 3, last_active)
    assert [w.worker_id for w in chosen] == ["w3", "w2", "w1"]


def test_scale_in_without_activity_data_prefers_newest_launch() -> None:
    workers = [worker(1, WorkerState.RUNNING, launched_at=1), worker(2, WorkerState.RUNNING, launched_at=2)]
    assert [w.worker_id for w in workers_to_stop(workers, 1)] == ["w2"]
    assert workers_to_stop(workers, 0) == []
