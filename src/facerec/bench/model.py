"""`facerec bench model`: detect+embed throughput at batch 1 and batched, the embedding stage alone, peak RSS.

Images: the 10 unique cse546 test images (64x64) and lfw_small (250x250). Every figure is the median of
`--rounds` rounds; the machine's cores are shared, so expect noise between runs, not within one.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import torch

from facerec.bench.options import datasets_option, json_option
from facerec.recognition.results import FaceResult
from facerec.settings import Settings

GFLOP_PER_FACE_AT_160 = 2.84  # InceptionResnetV1 forward pass, scales with the crop's area
BATCH_SIZES = (4, 8, 16, 32)


def cse546_images(datasets: Path) -> list[bytes]:
    """The 10 unique course images (the zips repeat them)."""
    unique: dict[bytes, None] = {}
    with zipfile.ZipFile(datasets / "cse546" / "face_images_100.zip") as archive:
        for name in sorted(archive.namelist()):
            if name.lower().endswith((".jpg", ".jpeg", ".png")):
                unique.setdefault(archive.read(name), None)
    return list(unique)


def lfw_images(datasets: Path, limit: int) -> list[bytes]:
    files = sorted(p for p in (datasets / "lfw_small").rglob("*.jpg"))
    return [p.read_bytes() for p in files[:limit]]


def median_rate(items: int, run: Callable[[], Any], rounds: int) -> float:
    """Median of `items / seconds` over `rounds` runs."""
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        rates.append(items / (time.perf_counter() - started))
    return statistics.median(rates)


def pipeline_rates(recognizer: Any, images: Sequence[bytes], rounds: int) -> dict[str, Any]:
    """Faces/s of decode+detect+embed+match at batch 1 and at each batch size."""
    faces = sum(isinstance(o, FaceResult) and not o.no_face for o in recognizer.recognize(images))

    def batched(size: int) -> Callable[[], None]:
        def run() -> None:
            for start in range(0, len(images), size):
                recognizer.recognize(images[start : start + size])

        return run

    rates = {size: median_rate(faces, batched(size), rounds) for size in (1, *BATCH_SIZES) if size <= len(images)}
    best = max(rates, key=lambda size: rates[size])
    return {
        "images": len(images),
        "faces": faces,
        "faces_per_s_batch_1": round(rates[1], 2),
        "faces_per_s_by_batch": {str(size): round(rate, 2) for size, rate in rates.items()},
        "best_batch": best,
        "faces_per_s_best": round(rates[best], 2),
        "speedup": round(rates[best] / rates[1], 2),
    }


def embedding_rates(recognizer: Any, crop_size: int, rounds: int) -> dict[str, Any]:
    """The embedding stage alone on standardised crops (no detection)."""
    gflop = GFLOP_PER_FACE_AT_160 * (crop_size / 160) ** 2
    rates = {}
    for size in (1, *BATCH_SIZES):
        crops = torch.randn(size, 3, crop_size, crop_size) * 0.5
        recognizer.embed_crops(crops)  # first call at a new shape pays for allocator growth
        repeats = max(1, 32 // size)

        def run(c: torch.Tensor = crops, r: int = repeats) -> list[Any]:
            return [recognizer.embed_crops(c) for _ in range(r)]

        rates[size] = median_rate(size * repeats, run, rounds)
    best = max(rates, key=lambda size: rates[size])
    return {
        "faces_per_s_by_batch": {str(size): round(rate, 2) for size, rate in rates.items()},
        "best_batch": best,
        "faces_per_s_best": round(rates[best], 2),
        "gflop_per_face": round(gflop, 2),
        "gflop_per_s_best": round(rates[best] * gflop, 1),
    }


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@click.command()
@json_option(Path("bench-results/model.json"))
@datasets_option()
@click.option("--lfw-images", "lfw_count", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--random-init",
    is_flag=True,
    help="Use an untrained InceptionResnetV1 (same arithmetic, same speed) when the weights are not prepared.",
)
def command(json_path: Path, datasets: Path, lfw_count: int, rounds: int, random_init: bool) -> None:
    """Throughput of the recognizer: detect+embed at batch 1 vs batched, the embedding stage alone, RSS."""
    from facerec.recognition.recognizer import Recognizer

    settings = Settings()
    started = time.perf_counter()
    if random_init:
        from facenet_pytorch import InceptionResnetV1

        recognizer = Recognizer(settings, model=InceptionResnetV1(classify=False), model_id="random-init")
    else:
        recognizer = Recognizer(settings)
    recognizer.warm_up()
    results: dict[str, Any] = {
        "weights": recognizer.model_id,
        "crop_size": settings.crop_size,
        "torch_threads": settings.torch_threads,
        "cpu_count": os.cpu_count(),
        "load_s": round(time.perf_counter() - started, 2),
        "rounds": rounds,
    }
    results["rss_after_load_mb"] = round(current_rss_mb(), 1)
    # The course's workload sends its 10 distinct images over and over: batches up to 32 of them, as a worker sees.
    results["cse546"] = pipeline_rates(recognizer, (cse546_images(datasets) * 7)[:64], rounds)
    results["lfw_small"] = pipeline_rates(recognizer, lfw_images(datasets, lfw_count), rounds)
    results["embedding"] = embedding_rates(recognizer, settings.crop_size, rounds)
    results["peak_rss_mb"] = round(peak_rss_mb(), 1)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    click.echo(json.dumps(results, indent=2))
    click.echo(f"written to {json_path}", err=True)
