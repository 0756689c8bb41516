"""`facerec bench start`: how fast the local fleet grows and shrinks, per worker start mode (fork, spawn).

For each mode, one `facerec serve` (max 2 workers, a gallery of the labelled people) and, in order:
1. One request from 0 workers: one worker's start-to-ready (`worker_ready ready_s` in the service's log).
2. The course's pattern from 0 workers (N requests at concurrency N), then the same N again at once with the
   workers warm: total seconds each and their ratio; two workers started at once (start-to-ready of each).
3. From the last answer of the warm run until no worker process is left (descendants of `serve` other than
   the template, zombies excluded), and each worker's SIGTERM-to-exit (`worker_exited stop_s`).
4. Memory at idle: the web process's RSS, the template's RSS and PSS (its pages are shared with the
   workers it forks, so PSS is its fair share).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import httpx

from facerec.bench.load import run_load, summarize
from facerec.bench.options import datasets_option, json_option
from facerec.bench.stack import cse546_dir, cse546_images, raw_and_gallery, rss_mb, wait_workers

MODES = ("fork", "spawn")


def pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def live_descendants(pid: int) -> list[int]:
    """Descendants of `pid` that have not exited (zombies excluded), from /proc."""
    children: dict[int, list[int]] = {}
    states: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        child = int(stat.parent.name)
        children.setdefault(int(fields[1]), []).append(child)
        states[child] = fields[0]
    found: list[int] = []
    frontier = [pid]
    while frontier:
        for child in children.get(frontier.pop(), []):
            frontier.append(child)
            if states.get(child) != "Z":
                found.append(child)
    return found


def log_events(path: Path, event: str) -> list[dict[str, Any]]:
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if f'"event": "{event}"' in line:
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


async def time_to_no_workers(serve_pid: int, template_pid: int | None, within_s: float = 30) -> float | None:
    started = time.perf_counter()
    while time.perf_counter() - started < within_s:
        if not [p for p in live_descendants(serve_pid) if p != template_pid]:
            return round(time.perf_counter() - started, 3)
        await asyncio.sleep(0.01)
    return None


def start_service(workdir: Path, gallery: Path, port: int, mode: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "facerec", "serve", f"--port={port}", f"--data-dir={workdir / mode}"]
    argv += [f"--gallery={gallery}", "--max-workers=2"]
    env = {**os.environ, "FACEREC_WORKER_START": mode}
    with (workdir / f"serve-{mode}.log").open("wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)


async def wait_until(predicate: Any, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise click.ClickException(f"{what} not within {within_s} s")
        await asyncio.sleep(0.05)


async def measure_mode(
    mode: str, workdir: Path, gallery: Path, files: list[Path], labels: dict[str, str], port: int, requests: int
) -> dict[str, Any]:
    log = workdir / f"serve-{mode}.log"
    service = start_service(workdir, gallery, port, mode)
    url = f"http://127.0.0.1:{port}"
    results: dict[str, Any] = {"mode": mode}
    try:

        def ready() -> bool:
            if service.poll() is not None:
                raise click.ClickException(log.read_text()[-2000:])
            try:
                return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(ready, 60, "serve ready")
        template_pid: int | None = None
        if mode == "fork":
            await wait_until(lambda: log_events(log, "template_ready"), 120, "template ready")
            event = log_events(log, "template_ready")[0]
            template_pid = int(event["pid"])
            results["template_load_s"] = event.get("load_s")
        results["web_rss_idle_mb"] = round(rss_mb(service.pid), 1)
        if template_pid is not None:
            results["template_rss_idle_mb"] = round(rss_mb(template_pid), 1)
            results["template_pss_idle_mb"] = round(pss_mb(template_pid), 1)
        if await wait_workers(url, 0, 30) is None:
            raise click.ClickException("the service did not start with 0 workers")

        # 1. one request from 0 workers
        async with httpx.AsyncClient(timeout=120) as client:
            started = time.perf_counter()
            response = await client.post(f"{url}/", files={"inputFile": (files[0].name, files[0].read_bytes())})
            results["single_cold_request_s"] = round(time.perf_counter() - started, 3)
            results["single_cold_status"] = response.status_code
        results["single_last_answer_to_no_workers_s"] = await time_to_no_workers(service.pid, template_pid)
        single_ready = [float(e["ready_s"]) for e in log_events(log, "worker_ready")]

        # 2. the course's pattern from 0 workers, then warm
        sample = (files * (1 + requests // len(files)))[:requests]
        cold = summarize(await run_load(f"{url}/", sample, requests, requests, labels, progress=False, linger_s=0))
        warm = summarize(await run_load(f"{url}/", sample, requests, requests, labels, progress=False, linger_s=0))
        # 3. scale-in from the warm run's last answer
        results["last_answer_to_no_workers_s"] = await time_to_no_workers(service.pid, template_pid)
        await asyncio.sleep(0.5)  # the fleet logs each exit as it reaps it
        pair_ready = [float(e["ready_s"]) for e in log_events(log, "worker_ready")][len(single_ready) :]
        stops = [float(e["stop_s"]) for e in log_events(log, "worker_exited")]
        results.update(
            {
                "single_start_to_ready_s": median(single_ready),
                "pair_start_to_ready_s": [round(x, 3) for x in pair_ready],
                "worker_stop_s": [round(x, 3) for x in stops],
                "worker_stop_median_s": median(stops),
                "cold_duration_s": round(float(cold["duration_s"]), 3),
                "warm_duration_s": round(float(warm["duration_s"]), 3),
                "cold_vs_warm": round(float(cold["duration_s"]) / float(warm["duration_s"]), 3),
                "cold_correct": cold["correct"],
                "warm_correct": warm["correct"],
                "cold_failed": cold["failed"],
                "warm_failed": warm["failed"],
                "warm_throughput_rps": round(float(warm["throughput_rps"]), 2),
            }
        )
    finally:
        service.send_signal(signal.SIGINT)
        results["service_exit_code"] = service.wait(60)
    return results


@click.command(name="start")
@click.option("--requests", "num_requests", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--modes", default=",".join(MODES), show_default=True, help="Comma-separated: fork, spawn.")
@click.option("--port", type=int, default=8766, show_default=True)
@datasets_option()
@json_option(Path("bench-results/start.json"))
def command(num_requests: int, modes: str, port: int, datasets: Path, json_path: Path) -> None:
    """Worker start-to-ready, the course's pattern cold vs warm, scale-in and memory, per start mode."""
    chosen = [mode.strip() for mode in modes.split(",") if mode.strip()]
    if not chosen or any(mode not in MODES for mode in chosen):
        raise click.BadParameter(f"choose from {', '.join(MODES)}", param_hint="--modes")
    cse546 = cse546_dir(datasets)
    with tempfile.TemporaryDirectory(prefix="facerec-bench-start-") as tmp:
        workdir = Path(tmp)
        files, labels = cse546_images(cse546, workdir, "face_images_100.zip", "labels_100.csv")
        gallery = workdir / "gallery.pt"
        results: dict[str, Any] = {"requests": num_requests, "cores": os.cpu_count()}
        raw_and_gallery(files, labels, gallery, rounds=1)
        results["modes"] = []
        for mode in chosen:
            results["modes"].append(
                asyncio.run(measure_mode(mode, workdir, gallery, files, labels, port, num_requests))
            )
            # The service's log (worker and batch events) next to the results, for a closer look.
            json_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(workdir / f"serve-{mode}.log", json_path.with_name(f"{json_path.stem}-serve-{mode}.log"))
            for worker_log in sorted((workdir / mode / "logs").glob("*.log")):
                shutil.copyfile(worker_log, json_path.with_name(f"{json_path.stem}-{mode}-{worker_log.name}"))
    for mode in results["modes"]:
        click.echo(f"--- {mode['mode']}")
        for key, value in mode.items():
            if key != "mode":
                click.echo(f"{key}: {value}")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2))
    click.echo(f"wrote {json_path}")
