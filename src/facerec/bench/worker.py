"""`facerec bench worker`: the recognizer's raw batched throughput vs a worker process's throughput through
the local queue and store, on the same images, plus the worker's peak RSS.

Raw: `recognize()` called directly on batches of `batch_max` in this process (median of rounds, some
interleaved with the worker runs so both see the same background load). Through the worker: a
`facerec worker` subprocess on a fresh local data tier; once it reports ready, N requests are enqueued at
once and the clock runs until all N responses are in. Also reported: the share of that wall time the model
was busy (from the worker's `batch_done` logs), the least noise-sensitive measure of the worker's overhead.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import click

from facerec import keys
from facerec.adapters.local_fleet import default_command
from facerec.messages import RecognitionRequest, parse_response
from facerec.recognition.results import BatchRecognizer
from facerec.settings import Settings
from facerec.worker.memory import MALLOC_ARENAS

RESPONSE_POLL_PAUSE_S = 0.05
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFAULT_IMAGES = Path(os.environ.get("FACEREC_DATASETS", "../shared/datasets")) / "cse546" / "face_images_100.zip"


def load_images(source: Path) -> list[tuple[str, bytes]]:
    """(filename, bytes) from a folder or a zip archive of images."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        return [(p.name, p.read_bytes()) for p in files]
    with zipfile.ZipFile(source) as archive:
        names = sorted(n for n in archive.namelist() if n.lower().endswith(IMAGE_SUFFIXES))
        return [(Path(n).name, archive.read(n)) for n in names]


def raw_throughput(recognizer: Any, images: list[bytes], batch_max: int, rounds: int) -> list[float]:
    """Images per second calling `recognize()` directly, one figure per round."""
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        for start in range(0, len(images), batch_max):
            recognizer.recognize(images[start : start + batch_max])
        rates.append(len(images) / (time.perf_counter() - started))
    return rates


def random_weights_recognizer(settings: Settings) -> BatchRecognizer:
    """The real Recognizer pipeline (decode, MTCNN, crop, InceptionResnetV1, gallery lookup), warmed up, with
    a randomly initialised embedding network: the same compute as with trained weights.

    For measuring the worker's overhead where the converted weights are not available; select it with
    `--recognizer-factory facerec.bench.worker:random_weights_recognizer`.
    """
    from facenet_pytorch import InceptionResnetV1

    from facerec.recognition.recognizer import Recognizer

    recognizer = Recognizer(settings, model=InceptionResnetV1(pretrained=None, classify=False), model_id="random")
    recognizer.warm_up()
    return recognizer


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# Shared objects of the CUDA build that a CPU build does not have (the GPU kernels and their runtime).
_CUDA_LIBRARY = re.compile(r"/nvidia/|/lib(cu|nv|torch_cuda|c10_cuda|cudnn|nccl)[^/]*\.so|/triton/")


def _cuda_libraries_mb(pid: int) -> float | None:
    """Resident memory of the process's mappings of CUDA libraries: what a CPU build of torch would not load.
    The worker never uses a GPU, but the CUDA build maps (and partly touches) its libraries at import."""
    total_kb = 0
    library = False
    try:
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                library = len(fields) >= 6 and _CUDA_LIBRARY.search(fields[5]) is not None
            elif library and fields and fields[0] == "Rss:":
                total_kb += int(fields[1])
    except OSError:
        return None
    return total_kb / 1024


def _wait_ready(process: subprocess.Popen[bytes], ready: Path, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not ready.exists():
        if process.poll() is not None:
            raise click.ClickException(f"worker exited with {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            process.kill()
            raise click.ClickException(f"worker not ready after {within_s} s")
        time.sleep(0.05)


async def _enqueue_and_collect(settings: Settings, files: list[tuple[str, bytes]], within_s: float) -> dict[str, Any]:
    from facerec.backend import open_data_tier

    async with open_data_tier(settings) as data:
        requests = []
        for filename, image in files:
            request_id = keys.new_request_id()
            request = RecognitionRequest(
                id=request_id,
                input_key=keys.input_key(filename, request_id),
                output_key=keys.output_key(filename, request_id),
                filename=filename,
                enqueued_at=0.0,
            )
            await data.inputs.put(request.input_key, image)
            requests.append(request)
        started = time.perf_counter()
        stamped = [r.model_copy(update={"enqueued_at": time.time()}).to_json() for r in requests]
        await data.requests.send_batch(stamped)
        answered: dict[str, Any] = {}
        deadline = time.monotonic() + within_s
        while len(answered) < len(requests) and time.monotonic() < deadline:
            # Short polls with a pause, not long polls: a polling queue adapter would otherwise spend CPU
            # that the worker's model, on the same cores, is being measured with.
            messages = await data.responses.receive(10, wait_seconds=0)
            for message in messages:
                response = parse_response(message.body)
                answered[response.id] = response
            if messages:
                await data.responses.delete_batch([m.receipt for m in messages])
            else:
                await asyncio.sleep(RESPONSE_POLL_PAUSE_S)
        elapsed = time.perf_counter() - started
    errors = sum(1 for r in answered.values() if r.error is not None)
    return {
        "requests": len(requests),
        "answered": len(answered),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "images_per_s": round(len(answered) / elapsed, 2),
    }


def _stage_medians(log_file: Path) -> dict[str, float]:
    stages: dict[str, list[float]] = {}
    sizes: list[float] = []
    for line in log_file.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") != "batch_done":
            continue
        sizes.append(record["size"])
        for key, value in record.items():
            if key.endswith("_s") and key != "started_at":
                stages.setdefault(key, []).append(value)
    summary = {f"median_{k}": round(statistics.median(v), 4) for k, v in stages.items()}
    if sizes:
        summary["batches"] = len(sizes)
        summary["median_batch_size"] = statistics.median(sizes)
        summary["inference_total_s"] = round(sum(stages.get("infer_s", [])), 3)
    return summary


def run_worker_once(
    settings: Settings,
    files: list[tuple[str, bytes]],
    prefetch: bool,
    worker_args: list[str],
    workdir: Path,
) -> dict[str, Any]:
    ready, log_file = workdir / "ready", workdir / "worker.log"
    argv = [
        *default_command(settings),  # as the local fleet starts workers
        f"--batch-max={settings.batch_max}",
        f"--batch-fill-wait-ms={settings.batch_fill_wait_ms}",
        "--prefetch" if prefetch else "--no-prefetch",
        f"--ready-file={ready}",
        "--name=bench-worker",
        *worker_args,
    ]
    with log_file.open("wb") as log_handle:
        # Started as LocalFleet, the systemd unit and the worker image start workers (fewer malloc arenas).
        env = {**os.environ, "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", str(MALLOC_ARENAS))}
        process = subprocess.Popen(argv, stderr=log_handle, stdout=log_handle, env=env)
        try:
            load_started = time.perf_counter()
            _wait_ready(process, ready, within_s=600)
            load_s = time.perf_counter() - load_started
            result = asyncio.run(_enqueue_and_collect(settings, files, within_s=600))
            result["peak_rss_mb"] = _peak_rss_mb(process.pid)
            result["cuda_libraries_mb"] = _cuda_libraries_mb(process.pid)
            result["startup_s"] = round(load_s, 2)
            process.send_signal(signal.SIGTERM)
            result["exit_code"] = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    result.update(_stage_medians(log_file))
    # How much of the wall time the model was busy: the pipeline's own efficiency, less sensitive than
    # images/s to other load on the machine.
    result["inference_share"] = round(result.get("inference_total_s", 0.0) / result["seconds"], 3)
    return result


@click.command(name="worker")
@click.option("-n", "--num-requests", type=click.IntRange(min=1), default=320, show_default=True)
@click.option(
    "--images",
    type=click.Path(exists=True, path_type=Path),
    default=DEFAULT_IMAGES,
    show_default=True,
    help="Folder or zip of images (cycled to N requests).",
)
@click.option("--batch-max", type=click.IntRange(1, 256), default=None, help="Default: settings.")
@click.option("--gallery", help="Gallery file for the recognizer (default: settings).")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True, help="Raw throughput rounds.")
@click.option(
    "--prefetch",
    "modes",
    type=click.Choice(["on", "off", "both"]),
    default="both",
    show_default=True,
    help="Worker runs with next-batch prefetch on, off, or one of each.",
)
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True, help="Worker runs per mode.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write results as JSON.")
@click.option("--recognizer-factory", hidden=True, help="module:callable building the recognizer (tests).")
def command(
    num_requests: int,
    images: Path,
    batch_max: int | None,
    gallery: str | None,
    rounds: int,
    modes: str,
    repeat: int,
    json_out: Path | None,
    recognizer_factory: str | None,
) -> None:
    """Recognizer throughput direct vs through a worker process and the local queue and store."""
    from facerec.worker.service import import_factory, load_recognizer

    overrides: dict[str, Any] = {"backend": "local"}
    if batch_max is not None:
        overrides["batch_max"] = batch_max
    if gallery is not None:
        overrides["gallery"] = gallery
    base = Settings(**overrides)
    pool = load_images(images)
    if not pool:
        raise click.ClickException(f"no images in {images}")
    files = [pool[i % len(pool)] for i in range(num_requests)]
    worker_args = [f"--recognizer-factory={recognizer_factory}"] if recognizer_factory else []
    if base.gallery:
        worker_args.append(f"--gallery={base.gallery}")

    factory = import_factory(recognizer_factory) if recognizer_factory else load_recognizer
    recognizer = factory(base)
    images_only = [image for _, image in files]
    rates = raw_throughput(recognizer, images_only, base.batch_max, rounds)
    click.echo(
        f"raw recognize(): {statistics.median(rates):.1f} images/s (median of {rounds}; "
        f"batch_max={base.batch_max}, N={num_requests}); one more raw round before each worker run"
    )

    runs: dict[str, list[dict[str, Any]]] = {}
    for attempt in range(repeat):
        for mode in ["on", "off"] if modes == "both" else [modes]:  # alternated: load drifts over time
            # Interleaved with the worker runs so that both see the same background load.
            rates += raw_throughput(recognizer, images_only, base.batch_max, rounds=1)
            with tempfile.TemporaryDirectory(prefix="facerec-bench-worker-") as tmp:
                settings = base.model_copy(update={"data_dir": Path(tmp) / "data", "prefix": "bench"})
                result = run_worker_once(settings, files, mode == "on", worker_args, Path(tmp))
            runs.setdefault(f"prefetch_{mode}", []).append(result)
            stages = {k.removeprefix("median_"): v for k, v in result.items() if k.startswith("median_")}
            click.echo(
                f"[{attempt + 1}/{repeat}] worker, prefetch {mode}: {result['images_per_s']:.1f} images/s "
                f"(raw just before: {rates[-1]:.1f}), model busy {result['inference_share']:.0%} of the time, "
                f"{result['answered']}/{result['requests']} answered, {result['errors']} errors, "
                f"peak RSS {result['peak_rss_mb'] or float('nan'):.0f} MB "
                f"(CUDA libraries {result['cuda_libraries_mb'] or 0.0:.0f} MB of it), exit {result['exit_code']}; "
                f"per batch (median): {stages}"
            )
    raw = statistics.median(rates)
    for results in runs.values():
        for result in results:
            result["ratio_to_raw"] = round(result["images_per_s"] / raw, 3)
    summary = {
        mode: {
            "median_images_per_s": statistics.median(r["images_per_s"] for r in results),
            "median_ratio_to_raw": statistics.median(r["ratio_to_raw"] for r in results),
            "median_inference_share": statistics.median(r["inference_share"] for r in results),
            "max_peak_rss_mb": max((r["peak_rss_mb"] or 0.0) for r in results),
            # What a CPU build of torch would peak at: the CUDA build's libraries are resident for nothing here.
            "max_peak_rss_without_cuda_mb": max(
                (r["peak_rss_mb"] or 0.0) - (r["cuda_libraries_mb"] or 0.0) for r in results
            ),
        }
        for mode, results in runs.items()
    }
    for mode, figures in summary.items():
        click.echo(
            f"{mode}: median {figures['median_images_per_s']:.1f} images/s = {figures['median_ratio_to_raw']:.0%} "
            f"of raw {raw:.1f}; model busy {figures['median_inference_share']:.0%}; "
            f"peak RSS {figures['max_peak_rss_mb']:.0f} MB ({figures['max_peak_rss_without_cuda_mb']:.0f} MB without "
            "the CUDA libraries)"
        )

    report = {
        "num_requests": num_requests,
        "images": str(images),
        "unique_images": len(pool),
        "batch_max": base.batch_max,
        "raw_images_per_s": round(raw, 2),
        "raw_rounds": [round(r, 2) for r in rates],
        "summary": summary,
        "worker_runs": runs,
    }
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
        click.echo(f"wrote {json_out}")
