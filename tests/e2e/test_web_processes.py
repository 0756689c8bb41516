"""Several web processes on one local deployment (#15), as real `facerec serve` processes on three ports with
fake-model workers (tests.worker.fakes names a photo by its colour, no torch): every answer reaches the process
that received its request, one scaler runs the fleet for all of them, and killing that process with -9 costs
only its own requests while another takes the scaler over and its reply queue is reaped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from facerec.backend import open_data_tier
from facerec.settings import Settings
from tests.e2e.processes import WorkerCensus, descendants, free_port, interrupt, wait_for_http
from tests.paths import REPO_ROOT
from tests.worker.fakes import PEOPLE, photo_of

pytestmark = pytest.mark.slow

MAX_WORKERS = 2
REQUESTS = 1500
CONCURRENCY = 48
NAMES = sorted(PEOPLE)
BOUNDARY = "facerec-e2e"


@dataclass
class Web:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Deployment:
    data_dir: Path
    webs: list[Web]
    census: WorkerCensus
    samples: list[tuple[float, int]] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    """What the test did when (monotonic), to tell when a sample was taken."""

    def web_pids(self) -> set[int]:
        return {web.process.pid for web in self.webs if web.process.poll() is None}


def start_web(data_dir: Path, tmp_path: Path, port: int | None = None, web_processes: int = 1) -> Web:
    port = port or free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
        "FACEREC_WORKER_RECOGNIZER_FACTORY": "tests.worker.fakes:process_recognizer",
        "FACEREC_MAX_WORKERS": str(MAX_WORKERS),
        "FACEREC_SCALE_IN_GRACE_S": "0.3",
        "FACEREC_WEB_POLL_WAIT_S": "1",
        "FACEREC_WORKER_POLL_WAIT_S": "0.5",
        "FACEREC_SHUTDOWN_GRACE_S": "2",
        "FACEREC_REQUEST_DEADLINE_S": "60",
    }
    log = tmp_path / f"serve-{port}.log"
    argv = [sys.executable, "-m", "facerec", "serve", f"--port={port}", f"--data-dir={data_dir}"]
    argv += [f"--web-processes={web_processes}"] if web_processes > 1 else []
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT)
    return Web(port, process, log)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    data_dir = tmp_path / "data"
    webs: list[Web] = []
    try:
        # The first is started alone, so it is the one that reads the fixed queue and runs the scaler.
        webs.append(start_web(data_dir, tmp_path))
        wait_for_http(f"{webs[0].url}/readyz", 60, webs[0].process, webs[0].log)
        webs += [start_web(data_dir, tmp_path) for _ in range(2)]
        for web in webs[1:]:
            wait_for_http(f"{web.url}/readyz", 60, web.process, web.log)
        yield Deployment(data_dir, webs, WorkerCensus(data_dir))
    finally:
        for web in webs:
            for pid in [web.process.pid, *descendants(web.process.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            web.process.wait(10)


@contextlib.asynccontextmanager
async def sampling(deployment: Deployment) -> AsyncIterator[None]:
    """Counts the worker processes every 50 ms while the block runs."""

    async def sample() -> None:
        while True:
            pids = await asyncio.to_thread(deployment.census.workers, deployment.web_pids())
            deployment.samples.append((time.monotonic(), len(pids)))
            if len(pids) > MAX_WORKERS:
                deployment.events.append((time.monotonic(), f"over the maximum: {pids}"))
            await asyncio.sleep(0.05)

    task = asyncio.create_task(sample())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def upload(stem: str, name: str) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="inputFile"; filename="{stem}.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    )
    return head.encode() + photo_of(name) + f"\r\n--{BOUNDARY}--\r\n".encode()


@dataclass(frozen=True)
class Outcome:
    port: int
    stem: str
    name: str
    status: int | None
    """None: no HTTP answer (connection error)."""
    body: str
    done_at: float

    @property
    def correct(self) -> bool:
        return self.status == 200 and self.body == f"{self.stem}:{self.name}"


async def send_load(
    client: httpx.AsyncClient,
    ports: list[int],
    count: int,
    progress: list[Outcome] | None = None,
    retried: list[str] | None = None,
) -> list[Outcome]:
    """`retried`: resend (once) a request whose connection broke before any answer, and list it there."""
    limit = asyncio.Semaphore(CONCURRENCY)
    headers = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    outcomes = progress if progress is not None else []

    async def one(index: int) -> None:
        port, name = ports[index % len(ports)], NAMES[index % len(NAMES)]
        stem = f"p{port}_{index}"
        async with limit:
            for attempt in range(2 if retried is not None else 1):
                try:
                    url = f"http://127.0.0.1:{port}/"
                    response = await client.post(url, content=upload(stem, name), headers=headers)
                    status, body = response.status_code, response.text.strip()
                    break
                except httpx.TransportError as exc:
                    status, body = None, type(exc).__name__
                    if retried is not None and attempt == 0:
                        retried.append(f"{stem}: {body}")
        outcomes.append(Outcome(port, stem, name, status, body, time.monotonic()))

    await asyncio.gather(*(one(index) for index in range(count)))
    return outcomes


async def readiness(client: httpx.AsyncClient, web: Web) -> dict[str, object]:
    body: dict[str, object] = (await client.get(f"{web.url}/readyz")).json()
    return body


async def until(condition: object, timeout_s: float, what: str) -> float:
    """Polls the async predicate every 50 ms; returns when it held (monotonic time)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if await condition():  # type: ignore[operator]
                return time.monotonic()
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def report(line: str) -> None:
    print(line)  # shown with `-n 0 -s`; the numbers the report of #15 quotes


@pytest.mark.timeout(180)  # about 40 s on this 2-core machine under other load, most of it the 1500 requests
async def test_three_web_processes_one_scaler_answers_to_their_senders_and_a_kill_costs_only_its_own(
    deployment: Deployment,
) -> None:
    a, b, c = deployment.webs
    # Idle connections are dropped after 1 s, well before uvicorn closes them (5 s): a request sent on a connection
    # the server is closing at that moment fails with ReadError, a client-side race that is no lost answer.
    limits = httpx.Limits(max_connections=CONCURRENCY + 8, keepalive_expiry=1.0)
    async with httpx.AsyncClient(timeout=90, limits=limits) as client:
        ready = [await readiness(client, web) for web in deployment.webs]
        channels = [r["reply_channel"] for r in ready]
        assert channels[0] == {"queue": "facerec-resp-queue", "own": False}  # the first keeps today's names
        assert all(ch["own"] for ch in channels[1:]) and len({ch["queue"] for ch in channels}) == 3  # type: ignore[index]
        leader_id = ready[0]["web_id"]
        assert all(r["scaler_lease"] == {"held": r["web_id"] == leader_id, "holder": leader_id} for r in ready)

        async with sampling(deployment):
            # 1. Load spread over the three ports: every answer right, and at the process that was asked.
            started = time.monotonic()
            # Under heavy machine load about 1 request in 2000 saw its connection break while its upload was being
            # read (server: ClientDisconnect before the request was registered; client: ReadError): nothing was
            # sent for it, so resending it is safe; such resends are counted and bounded, never hidden.
            retried: list[str] = []
            outcomes = await send_load(client, [a.port, b.port, c.port], REQUESTS, retried=retried)
            elapsed = time.monotonic() - started
            wrong = [o for o in outcomes if not o.correct]
            assert not wrong, wrong[:5]
            last_answer = max(o.done_at for o in outcomes)
            idle_at = await until(lambda: _no_workers(deployment), 30, "back to 0 workers")
            assert len(retried) <= 3, retried
            idle_s = idle_at - last_answer
            report(f"{REQUESTS} requests over 3 web processes in {elapsed:.1f} s, {len(retried)} resent")
            report(f"0 workers {idle_s:.2f} s after the last answer")
            assert idle_s < 10  # measured 1.0 s (issue: within 2 s); a loose bound for a loaded machine

            # 2. A clean stop of the scaler's holder hands the lease over at once (released, not expired).
            deployment.events.append((time.monotonic(), "SIGINT to the first leader"))
            a.process.send_signal(signal.SIGINT)
            assert a.process.wait(30) == 0
            stopped = time.monotonic()
            await until(lambda: _someone_leads(client, [b, c]), 20, "a new leader after a clean stop")
            report(f"clean hand-over: {time.monotonic() - stopped:.2f} s")
            leader, survivor = (b, c) if (await readiness(client, b))["scaler_lease"]["held"] else (c, b)  # type: ignore[index]
            doomed_queue = (await readiness(client, leader))["reply_channel"]["queue"]  # type: ignore[index]

            # 3. kill -9 of the new leader mid-load: the survivor answers all its own requests, takes the scaler
            # over and scales; the dead process's requests fail at their clients, never as wrong answers.
            progress: list[Outcome] = []
            # The same bounded resend as in 1.: a request whose connection broke before it was registered is sent
            # again (a busy machine ran 1 of 100 survivor requests into it); those at the dead process fail again.
            resent: list[str] = []
            load = asyncio.create_task(send_load(client, [leader.port, survivor.port], 200, progress, resent))
            await until(lambda: _answered(progress, 40), 60, "load under way")
            leader.process.kill()
            killed = time.monotonic()
            deployment.events.append((killed, "kill -9 of the second leader"))
            took_over = await until(lambda: _leads(client, survivor), 20, "the survivor takes the scaler over")
            scaled = await until(lambda: _has_workers(client, survivor), 20, "the new leader runs workers")
            outcomes = await load
            takeover_s, scaled_s = took_over - killed, scaled - killed
            report(f"kill -9 of the leader: lease taken over in {takeover_s:.2f} s, workers in {scaled_s:.2f} s")
            assert takeover_s < 15 and scaled_s < 20  # design: TTL + TTL/3 = 4 s; loose here
            survivors = [o for o in outcomes if o.port == survivor.port]
            assert all(o.correct for o in survivors), [o for o in survivors if not o.correct][:5]
            assert len([r for r in resent if r.startswith(f"p{survivor.port}_")]) <= 3, resent
            at_dead = [o for o in outcomes if o.port == leader.port]
            assert all(o.correct or o.status is None for o in at_dead), [o for o in at_dead if not o.correct][:5]

            # The dead process's reply queue is reaped once its heartbeat is stale (web_stale_s, 5 s).
            async with open_data_tier(Settings(data_dir=deployment.data_dir)) as data:
                assert data.replies is not None
                replies = data.replies

                async def reaped() -> bool:
                    return doomed_queue not in await replies.list()

                await until(reaped, 30, "the dead process's reply queue reaped")

    peak = max(count for _, count in deployment.samples)
    report(f"worker processes: peak {peak} of {MAX_WORKERS} over {len(deployment.samples)} samples")
    assert 0 < peak <= MAX_WORKERS, deployment.events


def still_running(pids: list[int]) -> list[int]:
    return [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


async def _no_workers(deployment: Deployment) -> bool:
    return bool(deployment.samples) and deployment.samples[-1][1] == 0


async def _someone_leads(client: httpx.AsyncClient, webs: list[Web]) -> bool:
    return any([await _leads(client, web) for web in webs])


async def _leads(client: httpx.AsyncClient, web: Web) -> bool:
    lease = (await readiness(client, web))["scaler_lease"]
    return isinstance(lease, dict) and lease["held"] is True


async def _has_workers(client: httpx.AsyncClient, web: Web) -> bool:
    response = await client.get(f"{web.url}/v1/workers")
    return response.status_code == 200 and response.json()["running"] + response.json()["starting"] > 0


async def _answered(progress: list[Outcome], count: int) -> bool:
    return len(progress) >= count


@pytest.mark.timeout(120)
async def test_web_processes_behind_one_port_form_one_deployment_and_ctrl_c_stops_them_all(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "data", free_port()
    web = start_web(data_dir, tmp_path, port=port, web_processes=2)
    try:
        wait_for_http(f"{web.url}/readyz", 60, web.process, web.log)
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(keepalive_expiry=1.0)) as client:
            outcomes = await send_load(client, [port], 8)
            assert all(o.correct for o in outcomes), [o for o in outcomes if not o.correct][:5]
            seen: dict[str, dict[str, object]] = {}

            async def both_answered() -> bool:
                # A new connection each time: either process may accept it.
                response = await client.get(f"{web.url}/readyz", headers={"connection": "close"})
                body = response.json()
                seen[str(body["web_id"])] = body
                return len(seen) == 2

            await until(both_answered, 30, "both web processes answer on the one port")
            assert sorted(bool(b["reply_channel"]["own"]) for b in seen.values()) == [False, True]  # type: ignore[index]
            assert sum(bool(b["scaler_lease"]["held"]) for b in seen.values()) == 1  # type: ignore[index]
        code, left = interrupt(web.process, 60)
        # Every web process, the template and the workers are gone; multiprocessing's resource tracker, which
        # uvicorn's supervisor started, ends on its own once its parent did: give it a moment.
        deadline = time.monotonic() + 10
        while left and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            left = still_running(left)
        assert code == 0 and left == [], web.log.read_text()[-3000:]
    finally:
        if web.process.poll() is None:
            for pid in [web.process.pid, *descendants(web.process.pid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            web.process.wait(10)
