"""InceptionResnetV1 in int8, quantised and compiled ahead of time: built once, loaded by workers without compiling.

`facerec weights prepare --int8` quantises the folded fp32 model with PyTorch's PT2E flow and torchao's
X86InductorQuantizer (int8 weights per channel, uint8 activations per tensor, calibrated on real face crops),
then compiles it with AOTInductor into a `.pt2` package beside the converted weights. A worker loads that package
with `torch._inductor.aoti_load_package` (a shared library and its constants: no compiler, no torchao) in well
under a second.

The package is compiled for fixed batch sizes (`INT8_BATCHES`), and a smaller chunk is padded up to the next
one: the quantised convolutions' weights are laid out for oneDNN at compile time for the input shape the
compiler sees, and with a dynamic batch dimension it cannot know it, so every call re-laid out a third of the
weights (measured: 140 ms per call, more than the arithmetic of 16 faces).

A package is used only if its sidecar names exactly these weights (their checksum), this torch and this CPU
capability (the generated code is compiled for the machine's instruction set) and the package's own checksum
matches; otherwise the worker embeds in fp32 and says so once in its log.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facerec.recognition import sidecars
from facerec.recognition.sidecars import read_json_object, sha256_file
from facerec.settings import Settings

log = logging.getLogger(__name__)

INT8_VERSION = 1
"""Part of the sidecar: bump when the build changes so that packages made by older code are rebuilt."""
INT8_BATCHES = (16,)
"""The batch sizes compiled; a chunk runs at the smallest one that holds it (padded). 16 is EMBED_CHUNK."""


class Int8Unavailable(RuntimeError):
    """The int8 package cannot be built here; the message says why."""


def cpu_capability() -> str:
    """The instruction set torch dispatches to here (e.g. AVX512, AVX2), for people reading a sidecar."""
    return str(torch.backends.cpu.get_cpu_capability())


_ISA_FLAGS = (
    "avx", "sse", "ssse", "fma", "f16c", "bmi", "amx", "gfni", "vaes", "vpclmul", "pclmul", "aes", "sha",
    "popcnt", "movbe", "abm", "adx",
)  # fmt: skip
"""Prefixes of the x86 `/proc/cpuinfo` flags that name instruction-set extensions compiled code may use."""


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """This CPU's instruction-set features, sorted: x86's flags that name extensions, ARM's "Features"; elsewhere
    the processor's name. Inductor compiles the packages with `-march=native` (AVX512-VNNI and -BF16 on this
    machine), so a package runs only on a CPU with every feature of the one it was built on; a package built on
    a Skylake-SP runs on a Cascade Lake (both are a `t3.small`), not the other way round."""
    try:
        lines = cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return sorted(flag for flag in value.split() if flag.startswith(_ISA_FLAGS))
        if key.strip() == "Features":
            return sorted(value.split())
    return [f"processor:{platform.processor() or platform.machine()}"]


def platform_stamp() -> dict[str, Any]:
    """The part of a package's stamp about where it runs, the same for every package built here: the torch it was
    compiled against and the CPU (`cpu_features` is checked as a subset, see `sidecars.SUBSET_KEYS`)."""
    return {"torch": torch.__version__, "cpu_capability": cpu_capability(), "cpu_features": cpu_features()}


def package_dir(settings: Settings, weights_id: str) -> Path:
    """Where the packages for these weights go: one `b<batch>.pt2` per INT8_BATCHES size and `int8.json`."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", weights_id)
    return Path(settings.weights_cache_dir) / f"{slug}-int8-c{settings.crop_size}"


def _package(folder: Path, size: int) -> Path:
    return folder / f"b{size}.pt2"


def _sidecar_path(folder: Path) -> Path:
    return folder / "int8.json"


def expected_stamp(settings: Settings, weights_id: str, weights_sha256: str) -> dict[str, Any]:
    """What a usable package's sidecar must say about what it was built from and for."""
    return {
        "int8_version": INT8_VERSION,
        "weights": weights_id,
        "weights_sha256": weights_sha256,
        "crop_size": settings.crop_size,
        "batches": list(INT8_BATCHES),
        **platform_stamp(),
    }


def read_sidecar(folder: Path) -> dict[str, Any] | None:
    return read_json_object(_sidecar_path(folder))


def _packages(folder: Path) -> dict[str, Path]:
    """The package files by their key in the sidecar."""
    return {str(size): _package(folder, size) for size in INT8_BATCHES}


def stale_reason(folder: Path, stamp: dict[str, Any]) -> str | None:
    """Why the packages in `folder` cannot be used for `stamp` (None: they can), without reading them."""
    return sidecars.stale_reason(read_sidecar(folder), _packages(folder).values(), stamp, "--int8")


class Int8Embedder:
    """The loaded package: [n, 3, S, S] standardised crops (n <= max(INT8_BATCHES)) -> [n, 512] float32."""

    def __init__(self, runners: dict[int, Callable[..., Any]], folder: Path, sidecar: dict[str, Any]) -> None:
        self.runners = runners
        self.folder = folder
        self.sidecar = sidecar

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        count = len(crops)
        size = next(size for size in sorted(self.runners) if size >= count)
        if count < size:
            # Padding rows are zeros (a grey crop after standardisation); each row is embedded independently.
            crops = torch.cat([crops, crops.new_zeros((size - count, *crops.shape[1:]))])
        output = self.runners[size](crops.contiguous(memory_format=torch.channels_last))
        vectors: torch.Tensor = output[0] if isinstance(output, list | tuple) else output
        return vectors[:count]


def load_int8(settings: Settings, weights_id: str, weights_sha256: str) -> Int8Embedder | str:
    """The package for these weights, or why it cannot be used (missing, stale, corrupt, fails to load)."""
    folder = package_dir(settings, weights_id)
    sidecar = read_sidecar(folder)
    stamp = expected_stamp(settings, weights_id, weights_sha256)
    reason = sidecars.stale_reason(sidecar, _packages(folder).values(), stamp, "--int8")
    if reason is not None:
        return reason
    assert sidecar is not None  # a missing sidecar is a stale reason
    try:
        mismatch = sidecars.checksum_mismatch(_packages(folder), sidecar, "--int8")
        return mismatch or Int8Embedder(_load_runners(folder), folder, sidecar)
    except Exception as exc:  # a broken or foreign package raises many types; all mean "use fp32"
        return f"package failed to load: {type(exc).__name__}: {exc}"


def _load_runners(folder: Path) -> dict[int, Callable[..., Any]]:
    return {size: torch._inductor.aoti_load_package(str(_package(folder, size))) for size in INT8_BATCHES}


# --- build --------------------------------------------------------------------------------------------------


def _padded(crops: torch.Tensor, size: int) -> torch.Tensor:
    """`crops` repeated to exactly `size` rows."""
    repeats = -(-size // len(crops))
    return crops.repeat(repeats, 1, 1, 1)[:size].contiguous(memory_format=torch.channels_last)


def _unit(vectors: torch.Tensor) -> np.ndarray:
    array = vectors.float().numpy()
    return np.asarray(array / np.linalg.norm(array, axis=1, keepdims=True))


def _distances(model: torch.nn.Module, embedder: Int8Embedder, crops: torch.Tensor) -> dict[str, float]:
    """Distance between the int8 and fp32 unit embeddings of `crops` (median, p95, max)."""
    reference, quantised = [], []
    with torch.inference_mode():
        for start in range(0, len(crops), max(INT8_BATCHES)):
            chunk = crops[start : start + max(INT8_BATCHES)].contiguous(memory_format=torch.channels_last)
            reference.append(_unit(model(chunk)))
            quantised.append(_unit(embedder(chunk)))
    return distance_summary(np.linalg.norm(np.concatenate(quantised) - np.concatenate(reference), axis=1))


def distance_summary(gaps: np.ndarray) -> dict[str, float]:
    """Median, p95 and max of distances between int8 and fp32 unit embeddings (the sidecar's and the accuracy
    benchmark's figures)."""
    return {
        "median": round(float(np.median(gaps)), 4),
        "p95": round(float(np.percentile(gaps, 95)), 4),
        "max": round(float(gaps.max()), 4),
    }


def build_int8(
    model: torch.nn.Module,
    calibration: torch.Tensor,
    check: torch.Tensor,
    folder: Path,
    stamp: dict[str, Any],
    calibration_source: str,
) -> dict[str, Any]:
    """Quantise the folded eval-mode `model` on `calibration` crops, compile one graph per INT8_BATCHES size into
    a package in `folder`, measure its distance to fp32 on `check` crops and write the sidecar. Minutes."""
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as exc:
        raise Int8Unavailable(f"torchao is not installed ({exc}); `pip install torchao==0.18.0`") from exc
    import torch._inductor.config as inductor_config

    from facerec.recognition.weights import atomic_write

    started = time.perf_counter()
    largest = max(INT8_BATCHES)
    model = model.eval().to(memory_format=torch.channels_last)
    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config())
    with torch.no_grad():
        traced = torch.export.export(model, (_padded(calibration, largest),)).module()
        observed = prepare_pt2e(traced, quantizer)
        for start in range(0, len(calibration), largest):
            observed(calibration[start : start + largest].contiguous(memory_format=torch.channels_last))
        quantised = convert_pt2e(observed)
        programs = {size: torch.export.export(quantised, (_padded(calibration, size),)) for size in INT8_BATCHES}
    calibrated = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    _sidecar_path(folder).unlink(missing_ok=True)  # a reader meanwhile finds no sidecar: "not built", fp32
    # Freezing makes the weights constants, so the int8 weights are packed for oneDNN at compile time.
    try:
        with inductor_config.patch(freezing=True), torch.no_grad():
            for size, program in programs.items():
                temporary = folder / f".building-b{size}.pt2"
                torch._inductor.aoti_compile_and_package(program, package_path=str(temporary))
                temporary.replace(_package(folder, size))
    except Exception as exc:  # no C++ compiler (a stock cloud image), an unsupported platform: fp32 stays in use
        raise Int8Unavailable(f"{type(exc).__name__}: {exc}") from exc
    compiled = time.perf_counter()
    loaded = Int8Embedder(_load_runners(folder), folder, {})
    sidecar = {
        **stamp,
        "sha256": {key: sha256_file(package) for key, package in _packages(folder).items()},
        "size": sum(_package(folder, size).stat().st_size for size in INT8_BATCHES),
        "calibration": calibration_source,
        "calibration_crops": len(calibration),
        "distance_to_fp32": _distances(model, loaded, check) if len(check) else None,
        "check_crops": len(check),
        "calibrate_s": round(calibrated - started, 1),
        "compile_s": round(compiled - calibrated, 1),
    }
    atomic_write(_sidecar_path(folder), json.dumps(sidecar, indent=2).encode())
    log.info("int8_built", extra={"path": str(folder), **{k: v for k, v in sidecar.items() if k != "sha256"}})
    return sidecar


def calibration_crops(settings: Settings, photos: Sequence[Path], wanted: int) -> torch.Tensor:
    """Up to `wanted` standardised face crops detected (as a worker would) in `photos`, one per photo."""
    from facerec.recognition.detection import FaceDetector
    from facerec.recognition.images import ImageDecodeError, decode_image

    detector = FaceDetector(settings)
    crops: list[torch.Tensor] = []
    step = 16
    for start in range(0, len(photos), step):
        if len(crops) >= wanted:
            break
        images = []
        for photo in photos[start : start + step]:
            try:
                # The workers' decoder: upright by EXIF, the same formats and pixel limits.
                images.append(decode_image(photo.read_bytes(), settings.max_image_pixels, settings.decode_max_side))
            except (ImageDecodeError, OSError):
                continue  # not an image: calibration takes what it can
        crops += [face.crop for face in detector.detect(images) if face is not None]
    if not crops:
        return torch.zeros((0, 3, settings.crop_size, settings.crop_size))
    return torch.stack(crops[:wanted])


def summary(sidecar: dict[str, Any]) -> str:
    distance = sidecar.get("distance_to_fp32") or {}
    parts = [f"{key} {value}" for key, value in distance.items()]
    return f"distance to fp32 {', '.join(parts) or 'not measured'}" + (
        f" (calibrate {sidecar.get('calibrate_s')} s, compile {sidecar.get('compile_s')} s)"
        if "compile_s" in sidecar
        else ""
    )
