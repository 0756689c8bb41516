"""Faults on the embedded default, with real processes: a hung worker, the web process killed and restarted
mid-flight, scale-in during load, and the store disappearing. Workers run the fake colour recognizer (no
torch), so these tests exercise the processes, queues and scaler rather than the model."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest

from facerec import backend
from facerec.settings import Settings
from facerec.testing import InstantWorker, jpeg_bytes
from facerec.web.app import create_app
from tests.e2e.processes import descendants, free_port, wait_for_http
from tests.paths import REPO_ROOT
from tests.worker.fakes import PEOPLE, collect, photo_of, submit
from tests.worker.processes import local_settings, wait_for_path, worker_process

pytestmark = pytest.mark.slow

FAKE_FACTORY = "tests.worker.fakes:process_recognizer"


@contextmanager
def serve(data_dir: Path, log: Path, port: int, **env_overrides: str) -> Iterator[subprocess.Popen[bytes]]:
    """`facerec serve` with fake-model workers; killed (with its workers) on exit if still running."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "FACEREC_WORKER_RECOGNIZER_FACTORY": FAKE_FACTORY,
        "FACEREC_SCALE_IN_GRACE_S": "0.3",
        "FACEREC_WEB_POLL_WAIT_S": "0.5",
        "FACEREC_WORKER_POLL_WAIT_S": "0.5",
        "FACEREC_VISIBILITY_TIMEOUT_S": "2",
        "FACEREC_SHUTDOWN_GRACE_S": "2",
        "FACEREC_MAX_WORKERS": "2",
        **env_overrides,
    }
    argv = [sys.executable, "-m", "facerec", "serve", f"--port={port}", f"--data-dir={data_dir}"]
    with log.open("ab") as sink:
        process = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz", 60, process, log)
        yield process
    finally:
        for pid in [process.pid, *descendants(process.pid)]:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(10)


async def post(client: httpx.AsyncClient, url: str, name: str, index: int) -> tuple[str, str, int | None, str]:
    """(filename stem, expected name, status or None on a connection error, body)."""
    stem = f"{name.lower()}_{index}"
    try:
        response = await client.post(url, files={"inputFile": (f"{stem}.jpg", photo_of(name), "image/jpeg")})
    except httpx.HTTPError as exc:
        return stem, name, None, type(exc).__name__
    return stem, name, response.status_code, response.text


async def workers_and_depth(client: httpx.AsyncClient, url: str) -> tuple[float, float]:
    text = (await client.get(f"{url}/metrics")).text
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith(("facerec_workers ", "facerec_queue_depth "))
    }
    return values.get("facerec_workers", -1), values.get("facerec_queue_depth", -1)


async def test_hung_worker_messages_are_answered_by_another(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, visibility_timeout_s=1.0)
    names = [list(PEOPLE)[i % len(PEOPLE)] for i in range(12)]
    async with backend.open_data_tier(settings) as data:
        requests = [await submit(data, f"h{i}.jpg", photo_of(name)) for i, name in enumerate(names)]
        with worker_process(settings, tmp_path, "hung", delay_s=0.3) as hung:
            await wait_for_path(tmp_path / "hung.batch", hung)
            hung.send_signal(signal.SIGSTOP)  # alive but frozen: it no longer extends its messages' visibility
            try:
                with worker_process(settings, tmp_path, "healthy") as healthy:
                    responses = await collect(data, {r.id for r in requests}, within_s=30)
                    assert healthy.poll() is None
            finally:
                hung.send_signal(signal.SIGCONT)
    answered = {r.id: r.result.name for r in responses if r.result is not None}
    assert answered == {r.id: name for r, name in zip(requests, names, strict=True)}
    assert {r.worker for r in responses} == {"healthy"}


async def test_web_restart_mid_flight_gives_errors_never_wrong_answers_then_drains(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir, log = tmp_path / "data", tmp_path / "serve.log"
    async with httpx.AsyncClient(timeout=30) as client:
        with serve(data_dir, log, port, FAKE_RECOGNIZER_DELAY_S="0.3") as first:
            flight = [asyncio.create_task(post(client, f"{url}/", list(PEOPLE)[i % 3], i)) for i in range(30)]
            await asyncio.sleep(1.5)  # workers started, some answers out, most still queued
            first.send_signal(signal.SIGKILL)
            outcomes = await asyncio.gather(*flight)
        for stem, name, status, body in outcomes:
            assert status in (None, 200, 503, 504), (status, body)
            if status == 200:
                assert body == f"{stem}:{name}", "a wrong answer after the restart"
        assert any(status is None for _, _, status, _ in outcomes), "the kill should have cut some requests off"

        with serve(data_dir, log, port) as second:
            # Requests the old process left in the queue are processed (their answers are dropped), then
            # the fleet goes back to 0 within the scale-in grace.
            settings = Settings(backend="local", data_dir=data_dir)
            deadline = time.monotonic() + 30
            async with backend.open_data_tier(settings) as data:
                while True:
                    left = await data.requests.stats()
                    workers, _ = await workers_and_depth(client, url)
                    if left.visible + left.in_flight == 0 and workers == 0:
                        break
                    assert time.monotonic() < deadline, f"not drained: {left}, workers {workers}"
                    await asyncio.sleep(0.1)
            stem, name, status, body = await post(client, f"{url}/", "Bo", 999)
            assert (status, body) == (200, f"{stem}:{name}")
            assert second.poll() is None


async def test_scale_in_during_load_drops_no_request(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=60) as client:
        with serve(tmp_path / "data", tmp_path / "serve.log", port, FAKE_RECOGNIZER_DELAY_S="0.05"):
            outcomes = []
            # Waves with pauses longer than the scale-in grace: workers are stopped between and during waves.
            for wave in range(4):
                batch = [post(client, f"{url}/", list(PEOPLE)[i % 3], wave * 100 + i) for i in range(15 + 10 * wave)]
                outcomes += await asyncio.gather(*batch)
                await asyncio.sleep(0.5)
    assert all(status == 200 and body == f"{stem}:{name}" for stem, name, status, body in outcomes), [
        o for o in outcomes if o[2] != 200
    ][:5]


async def test_store_directory_removed_is_503_then_recovers(tmp_path: Path) -> None:
    settings = Settings(backend="local", data_dir=tmp_path / "data", web_poll_wait_s=0.2, request_deadline_s=10)
    app = create_app(settings, companions=[lambda app, data: InstantWorker(data)])
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            upload = {"files": {"inputFile": ("a.jpg", jpeg_bytes(), "image/jpeg")}}
            assert (await client.post("/", **upload)).status_code == 200
            inputs = settings.data_dir / "blobs" / settings.in_bucket
            shutil.rmtree(inputs)
            down = await client.post("/", **upload)
            assert down.status_code == 503 and "image store" in down.text
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["inputs"].startswith("unavailable")
            inputs.mkdir()
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.post("/", **upload)).status_code == 200
