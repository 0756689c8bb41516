"""The worker process's lifecycle: readiness file, names, signals, grace period, threads."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from facerec.ports import DataTier
from facerec.settings import Settings
from facerec.worker.service import import_factory, run_worker, serve_worker
from tests.worker.fakes import FakeRecognizer, collect, make_settings, memory_tier, photo_of, submit


def tier_opener(data: DataTier):
    @contextlib.asynccontextmanager
    async def open_tier(settings: Settings) -> AsyncIterator[DataTier]:
        yield data

    return open_tier


def test_sigterm_stops_a_ready_worker_after_its_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = memory_tier()
    requests = [asyncio.run(submit(data, f"t{i}.jpg", photo_of("Paul"))) for i in range(6)]
    # The signal arrives while the batch is in inference.
    recognizer = FakeRecognizer(delay_s=0.05, on_batch_start=lambda: os.kill(os.getpid(), signal.SIGTERM))
    ready = tmp_path / "ready" / "w1"
    monkeypatch.setenv("FACEREC_WORKER_READY_FILE", str(ready))
    monkeypatch.setenv("FACEREC_WORKER_NAME", "worker-7")
    previous = signal.getsignal(signal.SIGTERM)

    stats = run_worker(make_settings(), lambda settings: recognizer, open_tier=tier_opener(data))

    assert ready.exists()
    assert signal.getsignal(signal.SIGTERM) == previous
    assert recognizer.threads == {"MainThread"}, "the model runs on the main thread"
    assert stats.answered == len(requests) and stats.batches == 1
    responses = asyncio.run(collect(data, expected=len(requests), within_s=1))
    assert sorted(r.id for r in responses) == sorted(req.id for req in requests)
    assert all(r.worker == "worker-7" for r in responses)


def test_worker_failure_is_raised_on_the_main_thread() -> None:
    @contextlib.asynccontextmanager
    async def broken_tier(settings: Settings) -> AsyncIterator[DataTier]:
        raise RuntimeError("no data tier")
        yield  # pragma: no cover

    with pytest.raises(RuntimeError, match="no data tier"):
        run_worker(make_settings(), lambda settings: FakeRecognizer(), open_tier=broken_tier)


async def test_grace_period_exceeded_releases_the_batch() -> None:
    data = memory_tier()
    recognizer = FakeRecognizer(delay_s=5.0)
    stop = asyncio.Event()
    settings = make_settings(shutdown_grace_s=0.2)
    task = asyncio.create_task(serve_worker(settings, recognizer, stop, open_tier=tier_opener(data)))
    await submit(data, "slow.jpg", photo_of("Bo"))
    assert await asyncio.to_thread(recognizer.started.wait, 5)

    stop.set()
    stats = await asyncio.wait_for(task, timeout=2)

    assert stats.released == 1 and stats.answered == 0
    assert (await data.requests.stats()).visible == 1


def test_import_factory_resolves_module_and_callable() -> None:
    assert import_factory("tests.worker.fakes:FakeRecognizer") is FakeRecognizer
    with pytest.raises(ValueError, match="module:callable"):
        import_factory("tests.worker.fakes")
