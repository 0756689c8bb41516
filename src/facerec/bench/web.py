"""`facerec bench web`: the web tier's own overhead. A fake worker answers instantly in the server process,
so the numbers measure upload, storage, queues, futures and HTTP, not the model.

Starts a real uvicorn on 127.0.0.1 in a subprocess and drives it with concurrent aiohttp clients (aiohttp
comes with aioboto3; httpx's client is itself the bottleneck at 100 concurrent connections here)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import click
import httpx

from facerec.settings import Settings
from facerec.testing import digest_name, instant_worker_companion, jpeg_bytes, memory_data_tier

log = logging.getLogger(__name__)


def _local_backend_available() -> bool:
    return importlib.util.find_spec("facerec.backend") is not None


def _bench_images(count: int) -> list[bytes]:
    return [jpeg_bytes((20 * i % 256, 40, 200 - 15 * i % 200)) for i in range(count)]


def _serve(port: int, backend: str, data_dir: str | None) -> None:
    import uvicorn

    from facerec.web.app import create_app

    overrides: dict[str, object] = {"max_in_flight": 100_000}
    if data_dir:
        overrides["data_dir"] = Path(data_dir)
    settings = Settings(**overrides)  # type: ignore[arg-type]
    factory = memory_data_tier if backend == "memory" else None
    app = create_app(settings, factory, companions=[instant_worker_companion()])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]  # typeshed: getsockname() returns Any
        return port


async def _wait_ready(base_url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=base_url) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise click.ClickException(f"server at {base_url} not ready after {timeout_s} s")


async def _drive_once(
    session: aiohttp.ClientSession, base_url: str, images: list[bytes], requests: int, concurrency: int
) -> dict[str, float | int]:
    expected = [digest_name(image) for image in images]
    latencies: list[float] = []
    ok = errors = wrong = 0
    counter = iter(range(requests))

    async def client_loop() -> None:
        nonlocal ok, errors, wrong
        for i in counter:
            form = aiohttp.FormData()
            form.add_field("inputFile", images[i % 10], filename=f"bench_{i % 10:02d}.jpg", content_type="image/jpeg")
            started = time.perf_counter()
            try:
                async with session.post(base_url + "/", data=form) as reply:
                    text = await reply.text()
            except aiohttp.ClientError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)
            if reply.status != 200:
                errors += 1
            elif text != f"bench_{i % 10:02d}:{expected[i % 10]}":
                wrong += 1
            else:
                ok += 1

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "requests": requests,
        "concurrency": concurrency,
        "ok": ok,
        "errors": errors,
        "wrong_answers": wrong,
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": round(requests / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(quantiles[98] * 1000, 2),
        "max_ms": round(max(latencies) * 1000, 2),
    }


async def _drive(base_url: str, requests: int, concurrency: int, runs: int) -> list[dict[str, float | int]]:
    """A warm-up (which also opens the keep-alive connections), then `runs` measured runs on one session."""
    images = _bench_images(10)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        await _drive_once(session, base_url, images, min(requests, 500), concurrency)
        return [await _drive_once(session, base_url, images, requests, concurrency) for _ in range(runs)]


@click.command()
@click.option("--requests", "total", default=3000, show_default=True, help="Requests per run.")
@click.option("--concurrency", default=100, show_default=True, help="Concurrent clients.")
@click.option("--runs", default=3, show_default=True, help="Runs; the report gives each and the medians.")
@click.option(
    "--backend",
    type=click.Choice(["auto", "local", "memory"]),
    default="auto",
    show_default=True,
    help="Data tier in the server: `local` (SQLite + directory, via facerec.backend) or in-process `memory`; "
    "`auto` picks local when facerec.backend exists.",
)
@click.option(
    "--json",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("bench-web.json"),
    help="JSON report.",
)
@click.option(
    "--durable-writes",
    type=click.Choice(["gallery", "all", "off"]),
    default="gallery",
    show_default=True,
    help="Which local stores fsync each object (the service's setting): `all` measures fsync on the request path.",
)
@click.option("--serve-port", type=int, default=None, hidden=True)
@click.option("--data-dir", type=str, default=None, hidden=True)
def command(
    total: int,
    concurrency: int,
    runs: int,
    backend: str,
    out: Path,
    durable_writes: str,
    serve_port: int | None,
    data_dir: str | None,
) -> None:
    """Web tier throughput and latency against a fake worker that answers instantly."""
    if backend == "auto":
        backend = "local" if _local_backend_available() else "memory"
    if serve_port is not None:
        _serve(serve_port, backend, data_dir)
        return
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="facerec-bench-web-"))
        argv = [sys.executable, "-m", "facerec", "bench", "web", f"--serve-port={port}", f"--backend={backend}"]
        argv.append(f"--data-dir={tmp}")
        env = {**os.environ, "FACEREC_BACKEND": "local", "FACEREC_DURABLE_WRITES": durable_writes}
        server = subprocess.Popen(argv, env=env)
        stack.callback(server.wait, 10)
        stack.callback(server.terminate)
        asyncio.run(_wait_ready(base_url))
        results = asyncio.run(_drive(base_url, total, concurrency, runs))
    summary = {
        "benchmark": "web",
        "backend": backend,
        "durable_writes": durable_writes,
        "server": "uvicorn 127.0.0.1 (subprocess), fake instant worker in the server process",
        "runs": results,
        "median_requests_per_s": statistics.median(r["requests_per_s"] for r in results),
        "median_p50_ms": statistics.median(r["p50_ms"] for r in results),
        "median_p99_ms": statistics.median(r["p99_ms"] for r in results),
        "targets": {"requests_per_s": 300, "p99_ms": 100},
    }
    for run in results:
        click.echo(
            f"{run['requests']} requests x{run['concurrency']}: {run['requests_per_s']} req/s, "
            f"p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms, errors {run['errors']}, wrong {run['wrong_answers']}"
        )
    click.echo(
        f"median ({backend}, durable writes: {durable_writes}): "
        f"{summary['median_requests_per_s']} req/s, p50 {summary['median_p50_ms']} ms, "
        f"p99 {summary['median_p99_ms']} ms"
    )
    out.write_text(json.dumps(summary, indent=2))
    click.echo(f"wrote {out}")
