"""`facerec bench stack`: the whole service on the embedded default, measured in one run.

1. The raw batched recognizer's throughput on the same images, in this process (the reference).
2. A gallery enrolled from the labelled images (the course's setup: every test image's person is known).
3. `facerec serve` as a subprocess with that gallery and 0 workers; cold start (first answer from 0 workers).
4. The course's workload: N requests at a given concurrency, answers checked against the labels.
5. Scale-in (the last answer until 0 workers), the web process's RSS before and after, and one more request.
6. With `--web-processes N`: the same workload once more against `facerec serve --web-processes N` (one port, N
   processes of one deployment, one scaler), from 0 workers as well: throughput vs the single process.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import httpx

from facerec.bench.load import LoadRun, load_labels, report_lines, run_load, summarize
from facerec.bench.worker import raw_throughput
from facerec.settings import Settings

DEFAULT_DATASETS = Path(__file__).resolve().parents[3].parent / "shared" / "datasets"


def extract_images(archive: Path, into: Path) -> list[Path]:
    with zipfile.ZipFile(archive) as zipped:
        for name in zipped.namelist():
            if name.lower().endswith((".jpg", ".jpeg", ".png")):
                (into / Path(name).name).write_bytes(zipped.read(name))
    return sorted(into.iterdir())


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cse546_dir(datasets: Path) -> Path:
    cse546 = datasets / "cse546"
    if not cse546.is_dir():
        raise click.ClickException(f"datasets not found at {cse546} (pass --datasets)")
    return cse546


def cse546_images(
    cse546: Path, workdir: Path, archive_name: str, labels_name: str
) -> tuple[list[Path], dict[str, str]]:
    """The course's images unpacked into `workdir/images`, and their labels."""
    (workdir / "images").mkdir()
    return extract_images(cse546 / archive_name, workdir / "images"), load_labels(cse546 / labels_name)


def raw_and_gallery(files: list[Path], labels: dict[str, str], gallery: Path, rounds: int) -> dict[str, Any]:
    """Raw throughput (batch_max images per call, median of rounds) and a gallery of the labelled people."""
    from facerec.recognition.gallery import Gallery
    from facerec.recognition.recognizer import Recognizer

    settings = Settings()
    recognizer = Recognizer(settings)
    recognizer.warm_up()
    images = [path.read_bytes() for path in files]
    sample = (images * (1 + 256 // max(1, len(images))))[:256]
    rates = raw_throughput(recognizer, sample, settings.batch_max, rounds)
    people: dict[str, list[Any]] = {}
    for path, outcome in zip(files, recognizer.embed(images), strict=True):
        name = labels.get(path.stem)
        if name is not None and hasattr(outcome, "shape"):
            people.setdefault(name, []).append(outcome)
    Gallery.from_people(people, recognizer.gallery_meta()).save(gallery)
    return {"raw_images_per_s": sorted(rates)[len(rates) // 2], "raw_rounds": rates, "gallery_people": len(people)}


async def wait_workers(url: str, target: int, within_s: float, poll_s: float = 0.05) -> float | None:
    """Seconds until /metrics reports `target` workers (None if not within `within_s`)."""
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=5) as client:
        while time.perf_counter() - started < within_s:
            text = (await client.get(f"{url}/metrics")).text
            line = next((x for x in text.splitlines() if x.startswith("facerec_workers ")), "")
            if line and float(line.split()[1]) == target:
                return time.perf_counter() - started
            await asyncio.sleep(poll_s)
    return None


async def timed_request(url: str, path: Path) -> tuple[float, int, str]:
    data = await asyncio.to_thread(path.read_bytes)
    async with httpx.AsyncClient(timeout=120) as client:
        started = time.perf_counter()
        response = await client.post(f"{url}/", files={"inputFile": (path.name, data, "image/jpeg")})
        return time.perf_counter() - started, response.status_code, response.text


def start_service(
    workdir: Path, gallery: Path, port: int, max_workers: int | None, web_processes: int = 1
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "facerec", "serve", f"--port={port}", f"--data-dir={workdir / 'data'}"]
    argv += [f"--gallery={gallery}"] + ([f"--max-workers={max_workers}"] if max_workers else [])
    argv += [f"--web-processes={web_processes}"] if web_processes > 1 else []
    log = (workdir / "serve.log").open("ab")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


async def wait_fleet_idle(url: str, within_s: float, poll_s: float = 0.1) -> float | None:
    """Seconds until the process running the scaler reports 0 workers on /v1/workers. Behind one port with
    several web processes a request reaches any of them: the others answer 404 (they do not run the fleet)."""
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=5) as client:
        while time.perf_counter() - started < within_s:
            # A fresh connection each time: any of the processes may accept it.
            response = await client.get(f"{url}/v1/workers", headers={"connection": "close"})
            if response.status_code == 200 and sum(response.json().values()) == 0:
                return time.perf_counter() - started
            await asyncio.sleep(poll_s)
    return None


async def measure_several(
    url: str, files: list[Path], labels: dict[str, str], requests: int, concurrency: int
) -> tuple[dict[str, Any], LoadRun]:
    """The same workload against several web processes on one port, prepared like the single run: one cold
    request first (the leader's worker template is then loaded, as the single run's is when its load starts),
    back to 0 workers, then the load."""
    if await wait_fleet_idle(url, 30) is None:
        raise click.ClickException("the web processes did not start with 0 workers")
    cold_s, _, _ = await timed_request(url, files[0])
    if await wait_fleet_idle(url, 30) is None:
        raise click.ClickException("the fleet did not return to 0 workers after the cold request")
    run = await run_load(f"{url}/", files, requests, concurrency, labels, progress=False, linger_s=0.0)
    zero_after = await wait_fleet_idle(url, 30)
    return {
        "cold_start_s": round(cold_s, 3),
        "scale_in_after_last_answer_s": None if zero_after is None else round(zero_after, 3),
    }, run


async def measure(
    url: str, pid: int, files: list[Path], labels: dict[str, str], requests: int, concurrency: int
) -> tuple[dict[str, Any], LoadRun]:
    numbers: dict[str, Any] = {}
    if await wait_workers(url, 0, 30) is None:
        raise click.ClickException("the service did not start with 0 workers")
    cold_s, status, text = await timed_request(url, files[0])
    numbers["cold_start_s"] = round(cold_s, 3)
    numbers["cold_start_answer"] = f"{status} {text}"
    numbers["scale_in_after_single_answer_s"] = await wait_workers(url, 0, 30)
    numbers["web_rss_before_mb"] = round(rss_mb(pid), 1)
    # run_load returns as the last answer arrives (no linger), so scale-in is timed from here.
    run = await run_load(f"{url}/", files, requests, concurrency, labels, progress=False, linger_s=0.0)
    zero_after = await wait_workers(url, 0, 30)
    numbers["scale_in_after_last_answer_s"] = None if zero_after is None else round(zero_after, 3)
    numbers["web_rss_after_mb"] = round(rss_mb(pid), 1)
    _, status, text = await timed_request(url, files[-1])
    numbers["request_after_load"] = f"{status} {text}"
    return numbers, run


@click.command(name="stack")
@click.option("--requests", "num_requests", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--datasets", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATASETS)
@click.option("--images", "archive_name", default="face_images_1000.zip", show_default=True, help="In cse546/.")
@click.option("--labels", "labels_name", default="labels_1000.csv", show_default=True, help="In cse546/.")
@click.option("--max-workers", type=click.IntRange(min=1), help="Default: the service's (cores).")
@click.option("--raw-rounds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--port", type=int, default=8765, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write results as JSON.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path), help="Write a PNG plot.")
@click.option(
    "--web-processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Also run the workload against `facerec serve --web-processes N` and compare throughput (N > 1).",
)
def command(
    num_requests: int,
    concurrency: int,
    datasets: Path,
    archive_name: str,
    labels_name: str,
    max_workers: int | None,
    raw_rounds: int,
    port: int,
    json_out: Path | None,
    plot_out: Path | None,
    web_processes: int,
) -> None:
    """Raw recognizer vs the full stack on the same images, cold start, scale-in and memory, in one run."""
    cse546 = cse546_dir(datasets)
    with tempfile.TemporaryDirectory(prefix="facerec-bench-") as tmp:
        workdir = Path(tmp)
        files, labels = cse546_images(cse546, workdir, archive_name, labels_name)
        gallery = workdir / "gallery.pt"
        results: dict[str, Any] = {"requests": num_requests, "concurrency": concurrency, "cores": os.cpu_count()}
        results.update(raw_and_gallery(files, labels, gallery, raw_rounds))
        gc.collect()
        click.echo(f"raw recognizer: {results['raw_images_per_s']:.1f} images/s (batches of {Settings().batch_max})")
        service = start_service(workdir, gallery, port, max_workers)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, service, workdir)
            numbers, run = asyncio.run(measure(url, service.pid, files, labels, num_requests, concurrency))
        finally:
            service.send_signal(signal.SIGINT)
            exit_code = service.wait(60)
        summary = summarize(run)
        results.update(numbers)
        results.update(summary)
        results["service_exit_code"] = exit_code
        results["stack_vs_raw"] = round(summary["throughput_rps"] / results["raw_images_per_s"], 3)
        if web_processes > 1:
            results["web_processes"] = several = run_several(
                workdir, gallery, port, max_workers, web_processes, files, labels, num_requests, concurrency
            )
            results["several_vs_one"] = round(several["throughput_rps"] / summary["throughput_rps"], 3)
        for line in report_lines(summary):
            click.echo(line)
        for key in ("stack_vs_raw", "cold_start_s", "scale_in_after_last_answer_s", "web_rss_before_mb"):
            click.echo(f"{key}: {results[key]}")
        click.echo(
            f"web_rss_after_mb: {results['web_rss_after_mb']}; request after load: {results['request_after_load']}"
        )
        if web_processes > 1:
            several = results["web_processes"]
            click.echo(
                f"{web_processes} web processes: {several['throughput_rps']:.1f} requests/s vs "
                f"{summary['throughput_rps']:.1f} with one ({results['several_vs_one']}x); "
                f"p50 {several['latency_p50_s']:.2f} s, p99 {several['latency_p99_s']:.2f} s; "
                f"{several['correct']}/{num_requests} correct; cold start {several['cold_start_s']} s; 0 workers "
                f"{several['scale_in_after_last_answer_s']} s after the last answer"
            )
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps({**results, "samples": [asdict(s) for s in run.samples]}, indent=2))
            click.echo(f"wrote {json_out}")
        if plot_out is not None:
            from facerec.bench.load_plot import plot_run

            plot_run(run, plot_out, title=f"facerec serve: {num_requests} requests, concurrency {concurrency}")
            click.echo(f"wrote {plot_out}")


def run_several(
    workdir: Path,
    gallery: Path,
    port: int,
    max_workers: int | None,
    processes: int,
    files: list[Path],
    labels: dict[str, str],
    requests: int,
    concurrency: int,
) -> dict[str, Any]:
    service = start_service(workdir, gallery, port, max_workers, processes)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, service, workdir)
        numbers, run = asyncio.run(measure_several(url, files, labels, requests, concurrency))
    finally:
        service.send_signal(signal.SIGINT)
        exit_code = service.wait(60)
    return {"processes": processes, **numbers, **summarize(run), "service_exit_code": exit_code}


def _wait_ready(url: str, service: subprocess.Popen[bytes], workdir: Path, within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise click.ClickException((workdir / "serve.log").read_text()[-2000:])
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise click.ClickException(f"{url} not ready within {within_s} s")
