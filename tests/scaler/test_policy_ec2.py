"""Scale-in choices for billed EC2 fleets: identity matching, pending instances, keep-warm."""

from __future__ import annotations

import pytest

from facerec.ports import WorkerInfo, WorkerState
from facerec.scaler.policy import ScalingConfig, workers_to_stop
from facerec.scaler.service import scaling_config
from facerec.settings import Settings

EC2 = ScalingConfig(max_workers=15, stop_pending=False)


def instance(n: int, state: WorkerState = WorkerState.RUNNING) -> WorkerInfo:
    return WorkerInfo(f"i-{n:017x}", f"app-tier-instance-{n}", state, launched_at=float(n))


def test_answers_signed_with_the_instance_id_pick_the_idlest() -> None:
    # Workers on EC2 sign answers with their instance id (IMDS); the newest instance is the busiest here.
    workers = [instance(1), instance(2), instance(3)]
    last_active = {workers[0].worker_id: 10.0, workers[1].worker_id: 5.0, workers[2].worker_id: 30.0}
    assert [w.worker_id for w in workers_to_stop(workers, 2, last_active, config=EC2)] == [
        workers[1].worker_id,
        workers[0].worker_id,
    ]


def test_answers_signed_with_the_name_tag_also_match() -> None:
    workers = [instance(1), instance(2)]
    last_active = {"app-tier-instance-1": 1.0, "app-tier-instance-2": 9.0}
    assert workers_to_stop(workers, 1, last_active, config=EC2) == [workers[0]]


def test_unmatched_names_fall_back_to_newest_first() -> None:
    # Names the fleet cannot map (e.g. hostname-pid) carry no information: the newest launch goes first.
    workers = [instance(1), instance(2)]
    assert workers_to_stop(workers, 1, {"ip-10-0-0-1-1234": 5.0}, config=EC2) == [workers[1]]


def test_pending_instances_are_never_stopped_on_ec2() -> None:
    workers = [instance(1, WorkerState.PENDING), instance(2), instance(3, WorkerState.PENDING)]
    assert workers_to_stop(workers, 3, config=EC2) == [workers[1]]
    # Locally a starting worker is the cheapest to stop.
    assert workers_to_stop(workers, 1, config=ScalingConfig()) == [workers[2]]


def test_stopping_instances_are_not_candidates() -> None:
    workers = [instance(1, WorkerState.STOPPING), instance(2, WorkerState.STOPPED)]
    assert workers_to_stop(workers, 2, config=EC2) == []


@pytest.mark.parametrize(("now", "expected"), [(69.0, []), (70.0, [1]), (95.0, [1]), (100.0, [1, 2])])
def test_keep_warm_stops_only_workers_idle_that_long(now: float, expected: list[int]) -> None:
    config = ScalingConfig(max_workers=15, stop_pending=False, keep_warm_s=60.0)
    workers = [instance(1), instance(2)]
    last_active = {workers[0].worker_id: 10.0, workers[1].worker_id: 40.0}
    # Instance 1 answered at 10 s but was (re)started at 5 s: idle since 10 s. Instance 2: since 40 s.
    active_since = {workers[0].worker_id: 5.0, workers[1].worker_id: 2.0}
    chosen = workers_to_stop(workers, 2, last_active, config=config, now=now, active_since=active_since)
    assert [workers.index(w) + 1 for w in chosen] == expected


def test_keep_warm_counts_a_silent_worker_from_its_start() -> None:
    config = ScalingConfig(keep_warm_s=60.0, stop_pending=False)
    [worker] = [instance(1)]
    assert workers_to_stop([worker], 1, {}, config=config, now=50.0, active_since={worker.worker_id: 0.0}) == []
    assert workers_to_stop([worker], 1, {}, config=config, now=60.0, active_since={worker.worker_id: 0.0}) == [worker]


def test_min_run_keeps_an_instance_for_its_billed_minute() -> None:
    config = ScalingConfig(min_run_s=60.0, stop_pending=False)
    workers = [instance(1), instance(2)]
    since = {workers[0].worker_id: 0.0, workers[1].worker_id: 30.0}
    last_active = {workers[0].worker_id: 55.0, workers[1].worker_id: 31.0}
    assert workers_to_stop(workers, 2, last_active, config=config, now=59.0, active_since=since) == []
    assert workers_to_stop(workers, 2, last_active, config=config, now=60.0, active_since=since) == [workers[0]]
    assert workers_to_stop(workers, 2, last_active, config=config, now=90.0, active_since=since) == [
        workers[1],
        workers[0],
    ]


def test_negative_keep_warm_or_min_run_is_refused() -> None:
    with pytest.raises(ValueError, match="keep_warm_s"):
        ScalingConfig(keep_warm_s=-1)
    with pytest.raises(ValueError, match="min_run_s"):
        ScalingConfig(min_run_s=-1)


def test_settings_choose_the_ec2_behaviour() -> None:
    aws = scaling_config(Settings(backend="aws", keep_warm_s=300, min_run_s=60))
    assert (aws.max_workers, aws.stop_pending, aws.keep_warm_s, aws.min_run_s) == (15, False, 300, 60)
    local = scaling_config(Settings(backend="local", max_workers=2))
    assert (local.stop_pending, local.keep_warm_s, local.min_run_s) == (True, 0, 0)
