"""LocalFleet against a fake worker: a tiny script that follows the worker's readiness and signal protocol."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from facerec.adapters.local_fleet import LocalFleet, default_command, settings_environment, usable_cores
from facerec.ports import Fleet, WorkerInfo, WorkerState
from facerec.settings import Settings

pytestmark = pytest.mark.slow

FAKE_WORKER = textwrap.dedent(
    """
    import json, os, signal, sys, time

    # argv: mode, then how loading ends: a delay in seconds, or "gate:PATH" (ready once PATH exists).
    mode, load = sys.argv[1], sys.argv[2]
    # With FAKE_STOP_GATE set, a graceful worker exits after SIGTERM only once that file exists, so a test can
    # observe "stopping" without racing the exit.
    stop_gate = os.environ.get("FAKE_STOP_GATE")
    stopping = False

    def on_sigterm(*_):
        global stopping
        if stop_gate is None:
            sys.exit(0)
        stopping = True

    signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else on_sigterm)
    print(json.dumps({k: v for k, v in os.environ.items() if k.startswith("FACEREC_")}), flush=True)
    if load.startswith("gate:"):
        while not os.path.exists(load.removeprefix("gate:")):
            time.sleep(0.01)
    else:
        time.sleep(float(load))
    ready = os.environ["FACEREC_WORKER_READY_FILE"]
    with open(ready + ".tmp", "w") as handle:
        handle.write(str(os.getpid()))
    os.replace(ready + ".tmp", ready)
    if mode == "crash":
        sys.exit(3)
    while True:
        if stopping and os.path.exists(stop_gate):
            sys.exit(0)
        time.sleep(0.02)
    """
)


@pytest.fixture
def fake_worker(tmp_path: Path) -> Path:
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    return script


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", prefix="fleet-test", shutdown_grace_s=1.0)


@pytest.fixture
async def make_fleet(settings: Settings, fake_worker: Path, tmp_path: Path) -> AsyncIterator[Callable[..., LocalFleet]]:
    """Builds fleets running the fake worker; closes them all afterwards (close() is idempotent)."""
    fleets: list[LocalFleet] = []

    def make(mode: str = "graceful", delay: float | Path = 0.1, max_workers: int = 3, **kwargs: object) -> LocalFleet:
        """`delay`: seconds until the fake worker is ready, or a gate file it waits for."""
        load = f"gate:{delay}" if isinstance(delay, Path) else str(delay)
        fleet = LocalFleet(
            settings,
            max_workers=max_workers,
            command=[sys.executable, str(fake_worker), mode, load],
            log_dir=tmp_path / "logs",
            **kwargs,  # type: ignore[arg-type]
        )
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        await fleet.close()


async def wait_for(fleet: LocalFleet, predicate: Callable[[list[WorkerInfo]], bool], within: float = 20.0) -> float:
    """Poll list() like the scaler does; returns the seconds it took for `predicate` to hold."""
    started = time.monotonic()
    while not predicate(await fleet.list()):
        if time.monotonic() - started > within:
            raise AssertionError(f"condition not met within {within} s: {await fleet.list()}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def pid_of(info: WorkerInfo) -> int:
    return int(info.worker_id.removeprefix("local-"))


def is_alive(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped by init) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def states(workers: list[WorkerInfo]) -> dict[str, WorkerState]:
    return {w.name: w.state for w in workers}


async def test_start_respects_max_names_and_becomes_running(
    make_fleet: Callable[..., LocalFleet], tmp_path: Path
) -> None:
    # The workers stay loading until the gate opens: "pending" is observed, not raced against start-up.
    gate = tmp_path / "gate"
    fleet = make_fleet(max_workers=3, delay=gate)
    assert isinstance(fleet, Fleet)
    started = await fleet.start(5)
    assert [w.name for w in started] == [f"app-tier-instance-{n}" for n in (1, 2, 3)]
    assert all(w.state is WorkerState.PENDING for w in started)
    assert all(w.launched_at and abs(w.launched_at - time.time()) < 5 for w in started)
    assert await fleet.start(2) == []
    assert [w.state for w in await fleet.list()] == [WorkerState.PENDING] * 3
    gate.touch()
    await wait_for(fleet, lambda ws: [w.state for w in ws] == [WorkerState.RUNNING] * 3)
    assert len(await fleet.list()) == 3


async def test_stop_goes_through_stopping_then_frees_the_name(
    make_fleet: Callable[..., LocalFleet], tmp_path: Path
) -> None:
    stop_gate = tmp_path / "stop-gate"
    fleet = make_fleet(max_workers=3, delay=0.0, env={"FAKE_STOP_GATE": str(stop_gate)})
    await fleet.start(3)
    await wait_for(fleet, lambda ws: all(w.state is WorkerState.RUNNING for w in ws))
    second = next(w for w in await fleet.list() if w.name == "app-tier-instance-2")
    await fleet.stop([second.worker_id, "local-999999999"])  # unknown ids are ignored
    assert states(await fleet.list())["app-tier-instance-2"] is WorkerState.STOPPING
    # A stopping worker still counts against the maximum (it finishes its batch on a core): no room until it exits.
    assert await fleet.start(5) == []
    stop_gate.touch()
    await wait_for(fleet, lambda ws: "app-tier-instance-2" not in states(ws), within=20.0)
    assert not is_alive(pid_of(second))
    assert [w.name for w in await fleet.start(5)] == ["app-tier-instance-2"]  # lowest free number


async def wait_for_output(log_file: Path, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(lambda: log_file.exists() and log_file.read_text().strip() != ""):
        assert time.monotonic() < deadline, f"{log_file} stayed empty for {within} s"
        await asyncio.sleep(0.02)


async def test_stop_of_pending_worker(make_fleet: Callable[..., LocalFleet], tmp_path: Path) -> None:
    fleet = make_fleet(max_workers=1, delay=tmp_path / "never-opened")
    [worker] = await fleet.start(1)
    await wait_for_output(tmp_path / "logs" / "app-tier-instance-1.log")  # the worker runs, still loading
    assert states(await fleet.list()) == {"app-tier-instance-1": WorkerState.PENDING}
    await fleet.stop([worker.worker_id])
    await wait_for(fleet, lambda ws: ws == [], within=20.0)


async def test_sigterm_ignored_escalates_to_sigkill(
    make_fleet: Callable[..., LocalFleet], caplog: pytest.LogCaptureFixture
) -> None:
    fleet = make_fleet(mode="stubborn", max_workers=1, delay=0.0, stop_grace_s=0.3)
    [worker] = await fleet.start(1)
    await wait_for(fleet, lambda ws: ws[0].state is WorkerState.RUNNING)
    with caplog.at_level(logging.INFO, logger="facerec.adapters.local_fleet"):
        await fleet.stop([worker.worker_id])
        assert states(await fleet.list()) == {"app-tier-instance-1": WorkerState.STOPPING}
        took = await wait_for(fleet, lambda ws: ws == [], within=20.0)
    assert took > 0.2  # it ignored SIGTERM for (about) the whole 0.3 s grace period
    assert not is_alive(pid_of(worker))
    [exited] = [r for r in caplog.records if r.getMessage() == "worker_exited"]
    assert exited.exit_code == -signal.SIGKILL
    assert [r.getMessage() for r in caplog.records].count("worker_killed") == 1


async def test_crashed_worker_is_reaped_and_replaced(make_fleet: Callable[..., LocalFleet]) -> None:
    fleet = make_fleet(mode="crash", max_workers=2, delay=0.0)
    await fleet.start(2)
    await wait_for(fleet, lambda ws: ws == [], within=20.0)
    assert len(await fleet.start(2)) == 2


async def test_close_leaves_no_child_process(make_fleet: Callable[..., LocalFleet]) -> None:
    stubborn = make_fleet(mode="stubborn", max_workers=2, delay=0.0, stop_grace_s=0.3)
    slow_to_load = make_fleet(max_workers=2, delay=30.0)
    workers = await stubborn.start(2) + await slow_to_load.start(2)
    await wait_for(stubborn, lambda ws: all(w.state is WorkerState.RUNNING for w in ws))
    await stubborn.close()
    await slow_to_load.close()
    assert [pid for pid in map(pid_of, workers) if is_alive(pid)] == []
    assert await stubborn.list() == []
    with pytest.raises(Exception, match="closed"):
        await stubborn.start(1)


async def test_worker_environment_and_logs(
    make_fleet: Callable[..., LocalFleet], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FACEREC_TORCH_THREADS", raising=False)
    fleet = make_fleet(max_workers=2, delay=0.0, env={"FACEREC_EXTRA": "yes"})
    await fleet.start(1)
    await wait_for(fleet, lambda ws: ws[0].state is WorkerState.RUNNING)
    await fleet.close()
    env = json.loads((tmp_path / "logs" / "app-tier-instance-1.log").read_text().splitlines()[0])
    assert env["FACEREC_WORKER_NAME"] == "app-tier-instance-1"
    assert env["FACEREC_TORCH_THREADS"] == str(max(1, usable_cores() // 2))
    assert env["FACEREC_PREFIX"] == "fleet-test"
    assert env["FACEREC_SHUTDOWN_GRACE_S"] == "1.0"
    assert env["FACEREC_EXTRA"] == "yes"


async def test_user_torch_threads_win(make_fleet: Callable[..., LocalFleet], tmp_path: Path) -> None:
    fleet = make_fleet(max_workers=2, delay=0.0, env={"FACEREC_TORCH_THREADS": "7"})
    await fleet.start(1)
    await wait_for(fleet, lambda ws: ws[0].state is WorkerState.RUNNING)
    await fleet.close()
    env = json.loads((tmp_path / "logs" / "app-tier-instance-1.log").read_text().splitlines()[0])
    assert env["FACEREC_TORCH_THREADS"] == "7"


def test_settings_environment_carries_explicit_settings_only() -> None:
    settings = Settings(prefix="abc", worker_prefetch=True, gallery=None, batch_max=8)
    env = settings_environment(settings)
    assert env["FACEREC_PREFIX"] == "abc"
    assert env["FACEREC_WORKER_PREFETCH"] == "true"
    assert env["FACEREC_BATCH_MAX"] == "8"
    assert "FACEREC_GALLERY" not in env
    assert "FACEREC_MAX_WORKERS" not in env
    assert "FACEREC_TORCH_THREADS" not in env
    assert Settings(**{k.removeprefix("FACEREC_").lower(): v for k, v in env.items()}).batch_max == 8


def test_default_command_runs_the_local_worker(tmp_path: Path) -> None:
    command = default_command(Settings(data_dir=tmp_path, prefix="abc"))
    assert command[:3] == [sys.executable, "-m", "facerec.worker"]
    assert command[command.index("--backend") + 1] == "local"
    assert command[command.index("--data-dir") + 1] == str(tmp_path)
    assert command[command.index("--prefix") + 1] == "abc"


PARENT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from facerec.adapters.local_fleet import LocalFleet
    from facerec.settings import Settings

    async def main():
        fleet = LocalFleet(Settings(data_dir=Path(sys.argv[2])), max_workers=2,
                           command=[sys.executable, sys.argv[1], "graceful", "0"], log_dir=Path(sys.argv[2]))
        workers = await fleet.start(2)
        print(" ".join(w.worker_id.removeprefix("local-") for w in workers), flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_workers_die_with_a_killed_parent(fake_worker: Path, tmp_path: Path) -> None:
    parent_script = tmp_path / "parent.py"
    parent_script.write_text(PARENT)
    parent = subprocess.Popen(
        [sys.executable, str(parent_script), str(fake_worker), str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(map(is_alive, pids))
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        parent.stdout.close()
    deadline = time.monotonic() + 5
    while any(map(is_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [pid for pid in pids if is_alive(pid)] == []


async def test_open_fleet_local_stops_workers_on_exit(tmp_path: Path, fake_worker: Path) -> None:
    from facerec.fleets import open_fleet

    # spawn: the command swapped in below is what starts; fork would load the real model in a template.
    settings = Settings(data_dir=tmp_path / "data", max_workers=2, worker_start="spawn")
    async with open_fleet(settings) as fleet:
        assert isinstance(fleet, LocalFleet) and fleet.max_workers == 2
        fleet._command = [sys.executable, str(fake_worker), "graceful", "0"]  # the real worker loads a model
        [worker] = await fleet.start(1)
    assert not is_alive(pid_of(worker))
    assert (tmp_path / "data" / "logs" / "app-tier-instance-1.log").exists()
