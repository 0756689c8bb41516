"""MTCNN's R-Net and O-Net compiled ahead of time: fp32, frozen, for any number of candidates.

`facerec weights prepare --detector` exports facenet-pytorch's R-Net and O-Net (their own weights, channels_last)
with a dynamic batch dimension and compiles each with AOTInductor into a `.pt2` package. A worker loads them with
`torch._inductor.aoti_load_package` in milliseconds; nothing is compiled at run time. The generated code fuses
each PReLU and max-pooling into the loops around the convolutions, which eager PyTorch runs as separate passes
over memory: measured here 2.1-2.6x faster for R-Net at 128-384 candidates and 1.3-1.4x for O-Net at 64-140,
with outputs within 2e-6 of eager (the same arithmetic, in another order).

Unlike the int8 embedding, the numbers do not change, so there is nothing to calibrate and one package serves
every batch size (fp32 weights are not re-laid out per input shape as quantised ones are). P-Net is not
compiled: its input size changes with every pyramid level and photo size, and its own compute is a small part of
its stage.

A package is used only if its sidecar names this version of the build, these networks' weights (their
checksum), this torch and this CPU capability, and the packages' own checksums match; otherwise the detector
runs the eager networks and says so once in the log.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from facerec.recognition import sidecars
from facerec.recognition.cascade import ONET_SIDE, RNET_SIDE
from facerec.recognition.compiled import platform_stamp
from facerec.recognition.sidecars import read_json_object, sha256_file
from facerec.settings import Settings

log = logging.getLogger(__name__)

DETECTOR_VERSION = 1
"""Part of the sidecar: bump when the build changes so that packages made by older code are rebuilt."""
NET_SIDES = {"rnet": RNET_SIDE, "onet": ONET_SIDE}
"""The compiled networks and the side of their square input patches."""
MAX_CANDIDATES = 1 << 16
"""Upper bound of the batch dimension the packages accept (a batch of 16 photos has a few hundred)."""
CHECK_SIZES = (1, 37, 300)
"""Batch sizes the build compares against eager before it keeps a package."""
MAX_DIFFERENCE = 1e-4
"""Largest output difference to eager a package may show (measured: under 2e-6)."""


class DetectorUnavailable(RuntimeError):
    """The packages cannot be built here; the message says why."""


def package_dir(settings: Settings) -> Path:
    return Path(settings.weights_cache_dir) / "mtcnn-compiled"


def _package(folder: Path, name: str) -> Path:
    return folder / f"{name}.pt2"


def _sidecar_path(folder: Path) -> Path:
    return folder / "detector.json"


def _eager_nets() -> dict[str, torch.nn.Module]:
    from facenet_pytorch.models.mtcnn import ONet, RNet

    return {"rnet": RNet().eval(), "onet": ONet().eval()}


def weights_checksums() -> dict[str, str]:
    """sha256 of facenet-pytorch's R-Net and O-Net weight files (the package compiles their values in)."""
    import facenet_pytorch

    data = Path(facenet_pytorch.__file__).parent / "data"
    return {name: sha256_file(data / f"{name}.pt") for name in NET_SIDES}


def expected_stamp() -> dict[str, Any]:
    """What usable packages' sidecar must say about what they were built from and for."""
    return {
        "detector_version": DETECTOR_VERSION,
        "weights_sha256": weights_checksums(),
        **platform_stamp(),
    }


def read_sidecar(folder: Path) -> dict[str, Any] | None:
    return read_json_object(_sidecar_path(folder))


def _packages(folder: Path) -> dict[str, Path]:
    """The package files by their key in the sidecar."""
    return {name: _package(folder, name) for name in NET_SIDES}


def stale_reason(folder: Path, stamp: dict[str, Any]) -> str | None:
    """Why the packages in `folder` cannot be used for `stamp` (None: they can), without loading them."""
    return sidecars.stale_reason(read_sidecar(folder), _packages(folder).values(), stamp, "--detector")


class CompiledNet:
    """A loaded package: [n, 3, side, side] normalised patches -> the network's outputs, as its eager one's."""

    def __init__(self, runner: Callable[..., Any]) -> None:
        self.runner = runner

    def __call__(self, patches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.runner(patches.contiguous(memory_format=torch.channels_last)))


def load(settings: Settings) -> dict[str, CompiledNet] | str:
    """The compiled R-Net and O-Net, or why they cannot be used (missing, stale, corrupt, fail to load)."""
    folder = package_dir(settings)
    sidecar = read_sidecar(folder)
    reason = sidecars.stale_reason(sidecar, _packages(folder).values(), expected_stamp(), "--detector")
    if reason is not None:
        return reason
    assert sidecar is not None  # a missing sidecar is a stale reason
    try:
        return sidecars.checksum_mismatch(_packages(folder), sidecar, "--detector") or _load_runners(folder)
    except Exception as exc:  # a broken or foreign package raises many types; all mean "run the eager nets"
        return f"package failed to load: {type(exc).__name__}: {exc}"


def _load_runners(folder: Path) -> dict[str, CompiledNet]:
    return {name: CompiledNet(torch._inductor.aoti_load_package(str(_package(folder, name)))) for name in NET_SIDES}


def largest_difference(
    eager: torch.nn.Module, compiled: CompiledNet, side: int, sizes: Sequence[int] = CHECK_SIZES
) -> float:
    """The largest absolute difference between the eager and compiled outputs over random patches."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    with torch.inference_mode():
        for size in sizes:
            patches = torch.rand((size, 3, side, side), generator=generator) * 2 - 1
            patches = patches.contiguous(memory_format=torch.channels_last)
            for reference, output in zip(eager(patches), compiled(patches), strict=True):
                worst = max(worst, float((reference - output).abs().max()))
    return worst


def build(folder: Path, stamp: dict[str, Any]) -> dict[str, Any]:
    """Export, compile and check both networks into `folder` and write the sidecar. Tens of seconds."""
    import torch._inductor.config as inductor_config
    from torch.export import Dim

    from facerec.recognition.weights import atomic_write

    started = time.perf_counter()
    nets = _eager_nets()
    folder.mkdir(parents=True, exist_ok=True)
    _sidecar_path(folder).unlink(missing_ok=True)  # a reader meanwhile finds no sidecar: "not built", eager
    candidates = Dim("candidates", min=1, max=MAX_CANDIDATES)
    try:
        # Freezing makes the weights constants, so the convolutions' weights are laid out at compile time.
        with inductor_config.patch(freezing=True), torch.no_grad():
            for name, net in nets.items():
                side = NET_SIDES[name]
                example = torch.zeros((8, 3, side, side)).contiguous(memory_format=torch.channels_last)
                program = torch.export.export(
                    net.to(memory_format=torch.channels_last), (example,), dynamic_shapes=({0: candidates},)
                )
                temporary = folder / f".building-{name}.pt2"
                torch._inductor.aoti_compile_and_package(program, package_path=str(temporary))
                temporary.replace(_package(folder, name))
    except Exception as exc:  # no compiler, an unsupported platform: the eager nets stay in use
        raise DetectorUnavailable(f"{type(exc).__name__}: {exc}") from exc
    loaded = _load_runners(folder)
    differences = {name: largest_difference(net, loaded[name], NET_SIDES[name]) for name, net in nets.items()}
    if max(differences.values()) > MAX_DIFFERENCE:
        raise DetectorUnavailable(f"compiled outputs differ from eager by {differences} (over {MAX_DIFFERENCE})")
    sidecar = {
        **stamp,
        "sha256": {key: sha256_file(package) for key, package in _packages(folder).items()},
        "size": sum(_package(folder, name).stat().st_size for name in NET_SIDES),
        "largest_difference_to_eager": differences,
        "compile_s": round(time.perf_counter() - started, 1),
    }
    atomic_write(_sidecar_path(folder), json.dumps(sidecar, indent=2).encode())
    log.info("detector_compiled", extra={"path": str(folder), **{k: v for k, v in sidecar.items() if k != "sha256"}})
    return sidecar
