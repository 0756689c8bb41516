"""`facerec bench model`: facerec against stock facenet-pytorch in the same run (same images, weights and threads),
where each millisecond goes (decode, detect+crop, embed, match), detect+embed throughput at batch 1 and batched,
the embedding stage alone against the machine's fp32 matmul rate, peak RSS.

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


def _stock_model(settings: Settings, random_init: bool, recognizer: Any) -> torch.nn.Module:
    from facenet_pytorch import InceptionResnetV1

    if random_init:
        torch.manual_seed(0)
        untrained: torch.nn.Module = InceptionResnetV1(classify=False).eval()
        return untrained
    from facerec.recognition.weights import load_embedding_model

    trained: torch.nn.Module = load_embedding_model(settings).eval()
    return trained


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


def matmul_gflops(rounds: int, size: int = 2048) -> float:
    """The machine's fp32 limit on these threads: a plain size x size matmul, median of `rounds`."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * size**3 / (time.perf_counter() - started) / 1e9)
    return round(statistics.median(rates), 1)


def stock_pipeline(model: torch.nn.Module, crop_size: int) -> Callable[[Sequence[bytes]], int]:
    """facenet-pytorch as its README uses it, one image at a time: PIL decode, MTCNN(image_size) returning the
    most probable face's crop, InceptionResnetV1 on it, the nearest of a gallery. Returns the faces found."""
    import io

    from facenet_pytorch import MTCNN
    from PIL import Image

    mtcnn = MTCNN(image_size=crop_size, device="cpu").eval()
    gallery = torch.nn.functional.normalize(torch.randn(100, 512), dim=1)

    def run(images: Sequence[bytes]) -> int:
        faces = 0
        with torch.inference_mode():
            for data in images:
                crop = mtcnn(Image.open(io.BytesIO(data)).convert("RGB"))
                if crop is None:
                    continue
                embedding = model(crop.unsqueeze(0))
                torch.cdist(embedding, gallery).argmin()
                faces += 1
        return faces

    return run


def versus_stock(
    recognizer: Any, stock: Callable[[Sequence[bytes]], int], images: Sequence[bytes], rounds: int
) -> dict[str, Any]:
    """Images/s of the stock pipeline and of `recognize()` in batches of `batch_max`, interleaved round by round
    (the cores are shared: both see the same neighbours), and the ratio of the medians."""
    batch = recognizer.settings.batch_max

    def ours() -> None:
        for start in range(0, len(images), batch):
            recognizer.recognize(images[start : start + batch])

    stock(images[:2])
    ours()
    stock_rates, our_rates = [], []
    for _ in range(rounds):
        stock_rates.append(median_rate(len(images), lambda: stock(images), 1))
        our_rates.append(median_rate(len(images), ours, 1))
    return {
        "images": len(images),
        "batch": batch,
        "stock_images_per_s": round(statistics.median(stock_rates), 2),
        "facerec_images_per_s": round(statistics.median(our_rates), 2),
        "ratio": round(statistics.median(our_rates) / statistics.median(stock_rates), 2),
    }


DETECTION_STAGES = ("pnet", "rnet", "onet", "crop")
"""`detect_and_crop` split: the cascade's three networks (each with its resampling and NMS), then the rest
(scaling for detection, cutting the aligned crops)."""


def stages(recognizer: Any, images: Sequence[bytes], rounds: int) -> dict[str, Any]:
    """Milliseconds per image of each stage of `recognize()` at `batch_max`, run stage by stage (medians), and
    of the parts of detection (`detect_ms_per_image`, medians per part: they need not add up exactly)."""
    from facerec.recognition.gallery import Gallery
    from facerec.recognition.images import decode_image

    settings = recognizer.settings
    batch = settings.batch_max
    parts = [images[start : start + batch] for start in range(0, len(images), batch)]
    gallery = Gallery.from_people(
        {f"p{i}": [v] for i, v in enumerate(torch.nn.functional.normalize(torch.randn(100, 512), dim=1).numpy())},
        recognizer.gallery_meta(),
    )
    timings: dict[str, list[float]] = {"decode": [], "detect_and_crop": [], "embed": [], "match": []}
    detection: dict[str, list[float]] = {stage: [] for stage in DETECTION_STAGES}
    for _ in range(rounds):
        totals = dict.fromkeys(timings, 0.0)
        split: dict[str, float] = {}
        for part in parts:
            started = time.perf_counter()
            decoded = [decode_image(data, settings.max_image_pixels, settings.decode_max_side) for data in part]
            totals["decode"] += time.perf_counter() - started
            started = time.perf_counter()
            faces = [face for face in recognizer.detector.detect(decoded, None, split) if face is not None]
            totals["detect_and_crop"] += time.perf_counter() - started
            started = time.perf_counter()
            vectors = recognizer.embed_crops(torch.stack([face.crop for face in faces])) if faces else []
            totals["embed"] += time.perf_counter() - started
            started = time.perf_counter()
            for vector in vectors:
                gallery.nearest(vector[None, :])
                gallery.candidates(vector[None, :], 1)
            totals["match"] += time.perf_counter() - started
        for stage, seconds in totals.items():
            timings[stage].append(seconds / len(images) * 1000)
        for stage in DETECTION_STAGES:
            detection[stage].append(split.get(stage, 0.0) / len(images) * 1000)
    ms = {stage: round(statistics.median(values), 2) for stage, values in timings.items()}
    around = ms["decode"] + ms["detect_and_crop"] + ms["match"]
    return {
        "ms_per_image": ms,
        "detect_ms_per_image": {stage: round(statistics.median(values), 2) for stage, values in detection.items()},
        "around_embed_vs_embed": round(around / ms["embed"], 2) if ms["embed"] else None,
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
        "embedding_variant": recognizer.variant,
        "crop_size": settings.crop_size,
        "torch_threads": settings.torch_threads,
        "cpu_count": os.cpu_count(),
        "load_s": round(time.perf_counter() - started, 2),
        "rounds": rounds,
    }
    results["rss_after_load_mb"] = round(current_rss_mb(), 1)
    results["matmul_2048_gflop_per_s"] = matmul_gflops(rounds)
    # Same weights, unfolded (the stock model as facenet-pytorch builds it), same threads.
    stock_model = _stock_model(settings, random_init, recognizer)
    stock = stock_pipeline(stock_model, settings.crop_size)
    cse, lfw = (cse546_images(datasets) * 10)[:100], lfw_images(datasets, 100)
    results["vs_stock"] = {
        "cse546": versus_stock(recognizer, stock, cse, rounds),
        "lfw_small": versus_stock(recognizer, stock, lfw, rounds),
    }
    results["stages"] = {"cse546": stages(recognizer, cse, rounds), "lfw_small": stages(recognizer, lfw, rounds)}
    del stock_model, stock
    # The course's workload sends its 10 distinct images over and over: batches up to 32 of them, as a worker sees.
    results["cse546"] = pipeline_rates(recognizer, (cse546_images(datasets) * 7)[:64], rounds)
    results["lfw_small"] = pipeline_rates(recognizer, lfw_images(datasets, lfw_count), rounds)
    results["embedding"] = embedding_rates(recognizer, settings.crop_size, rounds)
    results["embedding"]["vs_matmul"] = round(
        results["embedding"]["gflop_per_s_best"] / results["matmul_2048_gflop_per_s"], 2
    )
    results["peak_rss_mb"] = round(peak_rss_mb(), 1)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    click.echo(json.dumps(results, indent=2))
    click.echo(f"written to {json_path}", err=True)
