"""`facerec worker` processes on the local (SQLite + directory) data tier with a fake model: a worker
killed with SIGKILL mid-batch loses nothing, and a request that kills every worker ends in the DLQ."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from facerec.messages import RecognitionResponse, parse_response
from facerec.ports import DataTier
from facerec.settings import Settings
from tests.conftest import REPO_ROOT
from tests.worker.fakes import HARD_POISON, PEOPLE, photo_of, submit

backend = pytest.importorskip("facerec.backend", reason="the local data tier (facerec.backend) is not built yet")

pytestmark = pytest.mark.slow


def local_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "backend": "local",
        "data_dir": tmp_path / "data",
        "prefix": "wtest",
        "visibility_timeout_s": 1.0,
        "max_receives": 3,
        "batch_max": 8,
    }
    return Settings(**{**values, **overrides})


@contextmanager
def worker_process(settings: Settings, tmp_path: Path, name: str, delay_s: float = 0.0) -> Iterator[subprocess.Popen]:
    """A `python -m facerec.worker` subprocess running the fake recognizer; killed on exit."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "FACEREC_WORKER_NAME": name,
        "FACEREC_WORKER_READY_FILE": str(tmp_path / f"{name}.ready"),
        "FAKE_RECOGNIZER_DELAY_S": str(delay_s),
        "FAKE_RECOGNIZER_BATCH_FILE": str(tmp_path / f"{name}.batch"),
    }
    argv = [
        sys.executable,
        "-m",
        "facerec.worker",
        "--backend=local",
        f"--data-dir={settings.data_dir}",
        f"--prefix={settings.prefix}",
        f"--batch-max={settings.batch_max}",
        f"--visibility-timeout={settings.visibility_timeout_s}",
        f"--max-receives={settings.max_receives}",
        "--recognizer-factory=tests.worker.fakes:process_recognizer",
        "--log-level=WARNING",
    ]
    with open(tmp_path / f"{name}.log", "ab") as log:
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


async def wait_for_path(path: Path, process: subprocess.Popen, within_s: float = 30.0) -> None:
    deadline = time.monotonic() + within_s
    while not await asyncio.to_thread(path.exists):
        assert process.poll() is None, f"worker exited with {process.returncode}"
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        await asyncio.sleep(0.02)


async def collect(data: DataTier, ids: set[str], within_s: float) -> list[RecognitionResponse]:
    responses: list[RecognitionResponse] = []
    deadline = time.monotonic() + within_s
    while not ids <= {r.id for r in responses} and time.monotonic() < deadline:
        messages = await data.responses.receive(10, wait_seconds=0.2)
        responses.extend(parse_response(m.body) for m in messages)
        if messages:
            await data.responses.delete_batch([m.receipt for m in messages])
    return responses


async def test_sigkill_mid_batch_loses_nothing(tmp_path: Path) -> None:
    settings = local_settings(tmp_path)
    names = [list(PEOPLE)[i % len(PEOPLE)] for i in range(20)]
    async with backend.open_data_tier(settings) as data:
        requests = [await submit(data, f"k{i}.jpg", photo_of(name)) for i, name in enumerate(names)]
        expected = {req.id: name for req, name in zip(requests, names, strict=True)}

        with worker_process(settings, tmp_path, "doomed", delay_s=0.2) as doomed:
            await wait_for_path(tmp_path / "doomed.batch", doomed)
            doomed.send_signal(signal.SIGKILL)
            assert doomed.wait(5) == -signal.SIGKILL
        with worker_process(settings, tmp_path, "heir") as heir:
            responses = await collect(data, set(expected), within_s=30)
            assert heir.poll() is None
            heir.send_signal(signal.SIGTERM)
            assert heir.wait(15) == 0

        # Each request answered at least once; duplicates (a batch answered before the kill) agree.
        answers: dict[str, set[str]] = {}
        for response in responses:
            assert response.result is not None, response
            answers.setdefault(response.id, set()).add(response.result.name)
        assert answers == {request_id: {name} for request_id, name in expected.items()}
        for request in requests:
            assert await data.outputs.get(request.output_key) == expected[request.id].encode()
        stats = await data.requests.stats()
        assert (stats.visible, stats.in_flight) == (0, 0)


async def test_message_that_kills_every_worker_ends_in_the_dlq(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, max_receives=2, visibility_timeout_s=0.5)
    async with backend.open_data_tier(settings) as data:
        good = [await submit(data, f"g{i}.jpg", photo_of("Ana")) for i in range(3)]
        poison = await submit(data, "poison.jpg", HARD_POISON)

        # Restart the worker each time the poison kills it, as the fleet would; bounded, not a crash loop.
        good_ids = {req.id for req in good}
        answered: list[RecognitionResponse] = []
        exits: list[int] = []
        settled = False
        deadline = time.monotonic() + 40
        while not settled and time.monotonic() < deadline:
            with worker_process(settings, tmp_path, f"w{len(exits)}") as process:
                while process.poll() is None and not settled and time.monotonic() < deadline:
                    answered += await collect(data, good_ids, within_s=0.5)
                    in_dlq = (await data.dead_letters.stats()).visible
                    settled = len({r.id for r in answered}) + in_dlq >= len(good) + 1
                if process.poll() is not None:
                    exits.append(process.returncode)
        dead = {parse_id(m.body) for m in await data.dead_letters.receive(10, wait_seconds=1)}

    assert exits and all(code == 3 for code in exits)
    assert len(exits) <= settings.max_receives
    assert poison.id in dead and poison.id not in {r.id for r in answered}
    # A bystander received together with the poison on its last delivery can share its fate (the web tier
    # answers dead-lettered requests); processed alone, it is answered first when it comes first.
    assert {r.id for r in answered} | dead == good_ids | {poison.id}
    assert all(r.result is not None and r.result.name == "Ana" for r in answered)


def parse_id(body: str) -> str:
    from facerec.messages import parse_request

    return parse_request(body).id
