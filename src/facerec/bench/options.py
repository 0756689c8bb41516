"""Command-line options the benchmarks share."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

DEFAULT_DATASETS = Path(os.environ.get("FACEREC_DATASETS", "../shared/datasets"))

F = TypeVar("F", bound=Callable[..., Any])


def json_option(default: Path) -> Callable[[F], F]:
    """`--json FILE`: where the results go (passed as `json_path`)."""
    return click.option(
        "--json",
        "json_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=default,
        show_default=True,
        help="Write the results here as JSON.",
    )


def datasets_option(description: str = "The shared datasets folder (cse546/, lfw_small/).") -> Callable[[F], F]:
    """`--datasets DIR`, which must exist (passed as `datasets`)."""
    return click.option(
        "--datasets",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        default=DEFAULT_DATASETS,
        show_default=True,
        help=description,
    )
