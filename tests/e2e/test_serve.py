"""`facerec serve` as a user runs it: a subprocess on the embedded default with real workers and a gallery
enrolled from lfw_small (first 3 photos per person), answering 100 concurrent requests of the other photos."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from facerec.cli import main
from facerec.settings import Settings
from tests.e2e.processes import free_port, interrupt, wait_for_http
from tests.model_memo import memoise_model_work

pytestmark = pytest.mark.slow

# The recognizer's known misses on these probes (rank-1 about 99.4% when enrolled from 5 photos; 3 here). Answers
# are open-set at the calibrated threshold (docs/benchmarks.md): a photo beyond it is answered Unknown, a miss here.
ALLOWED_MISSES = 5


@pytest.fixture(scope="module")
def lfw_gallery(tmp_path_factory: pytest.TempPathFactory, lfw_dir: Path) -> Path:
    """`facerec enroll --per-person 3`, in this process: the same photos the lfw_small accuracy tests embed are
    then detected and embedded once per session (tests/model_memo.py), and no interpreter starts for it."""
    gallery = tmp_path_factory.mktemp("gallery") / "lfw3.pt"
    with pytest.MonkeyPatch.context() as patch:
        memoise_model_work(patch)
        argv = ["enroll", str(lfw_dir), "--gallery", str(gallery), "--per-person", "3"]
        result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    return gallery


@dataclass
class Service:
    url: str
    process: subprocess.Popen[bytes]
    settings: Settings
    log: Path
    worker_samples: list[tuple[float, int]] = field(default_factory=list)


@pytest.fixture
def service(tmp_path: Path, lfw_gallery: Path) -> Iterator[Service]:
    port = free_port()
    data_dir = tmp_path / "data"
    env = {
        **os.environ,
        "FACEREC_SCALE_IN_GRACE_S": "0.5",
        "FACEREC_WEB_POLL_WAIT_S": "1",
        "FACEREC_REQUEST_DEADLINE_S": "120",
    }
    argv = [sys.executable, "-m", "facerec", "serve", f"--port={port}", f"--data-dir={data_dir}"]
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([*argv, f"--gallery={lfw_gallery}"], stdout=sink, stderr=subprocess.STDOUT, env=env)
    service = Service(f"http://127.0.0.1:{port}", process, Settings(data_dir=data_dir), log)
    try:
        wait_for_http(f"{service.url}/readyz", timeout_s=60, process=process, log=log)
        yield service
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


async def sample_workers(service: Service, answered: asyncio.Event, timeout_s: float = 5.0) -> None:
    """Record the worker count every 50 ms until it is 0 after the last answer (or `timeout_s` after it)."""
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            metrics = (await client.get(f"{service.url}/metrics")).text
            line = next(x for x in metrics.splitlines() if x.startswith("facerec_workers "))
            count = int(float(line.split()[1]))
            service.worker_samples.append((time.monotonic(), count))
            if answered.is_set() and count == 0:
                return
            await asyncio.sleep(0.05)


async def recognize_all(service: Service, uploads: list[tuple[str, bytes]]) -> tuple[list[str], float]:
    """POST every (filename, bytes) at once; the answers in order and when the last one arrived."""
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one(filename: str, data: bytes) -> str:
            response = await client.post(f"{service.url}/", files={"inputFile": (filename, data, "image/jpeg")})
            assert response.status_code == 200, response.text
            return response.text

        answers = await asyncio.gather(*(one(filename, data) for filename, data in uploads))
        return list(answers), time.monotonic()


@pytest.mark.timeout(180)  # real workers load the model: about 30 s here with start-up
async def test_serve_answers_100_concurrent_requests_and_scales_0_to_n_to_0(
    service: Service, lfw_people: dict[str, list[Path]]
) -> None:
    probes = [(path, person) for person, photos in lfw_people.items() for path in photos[3:]][:100]
    assert len(probes) == 100
    uploads = [(path.name, path.read_bytes()) for path, _ in probes]
    answered = asyncio.Event()
    sampler = asyncio.create_task(sample_workers(service, answered))
    await asyncio.sleep(0.3)
    answers, last_answer_at = await recognize_all(service, uploads)
    answered.set()
    await asyncio.wait_for(sampler, timeout=10)

    expected = [f"{path.stem}:{person}" for path, person in probes]
    misses = [(got, want) for got, want in zip(answers, expected, strict=True) if got != want]
    print(f"e2e: {100 - len(misses)}/100 correct; misses: {misses}")
    assert len(misses) <= ALLOWED_MISSES, misses

    counts = [count for _, count in service.worker_samples]
    assert counts[0] == 0, "the service should start with no workers"
    assert max(counts) >= 1
    assert max(counts) <= service.settings.max_workers
    back_to_zero = next(t for t, count in service.worker_samples if t >= last_answer_at and count == 0)
    print(
        f"e2e: workers peaked at {max(counts)}, back to 0 {back_to_zero - last_answer_at:.2f} s after the last answer"
    )
    assert back_to_zero - last_answer_at <= 2.0

    from facerec.backend import open_data_tier

    async with open_data_tier(service.settings) as data:
        assert await data.inputs.count() == 100
        assert await data.outputs.count() == 100

    returncode, orphans = interrupt(service.process, timeout_s=30)
    assert returncode == 0, service.log.read_text()[-3000:]
    assert not orphans, "orphaned worker processes"
