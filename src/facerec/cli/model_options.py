"""Model settings as command-line options, shared by `facerec enroll` and `facerec recognize`.

Each option overrides its `FACEREC_*` environment variable only when given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from facerec.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS = [
    click.option("--weights", help="`casia-webface`, `vggface2` or a state_dict path [env FACEREC_WEIGHTS]."),
    click.option("--crop-size", type=int, help="Face crop size in pixels [env FACEREC_CROP_SIZE]."),
    click.option("--margin", type=int, help="Margin around the face, in crop pixels [env FACEREC_MARGIN]."),
    click.option("--min-face-size", type=int, help="Smallest face MTCNN looks for [env FACEREC_MIN_FACE_SIZE]."),
    click.option("--unknown-threshold", type=float, help="L2 distance beyond which a face is Unknown."),
    click.option("--torch-threads", type=int, help="CPU threads for inference [env FACEREC_TORCH_THREADS]."),
    click.option("--batch-max", type=int, help="Images per forward pass [env FACEREC_BATCH_MAX]."),
    click.option(
        "--course-gallery",
        "course_gallery_made_with",
        metavar="WEIGHTS:CROP:MARGIN",
        help="Accept a course-format data.pt gallery made this way, e.g. vggface2:240:0.",
    ),
]


def model_options(command: F) -> F:
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def settings_from_options(options: dict[str, Any]) -> Settings:
    """Settings from the environment, overridden by the model options that were given."""
    overrides = {key: value for key, value in options.items() if value is not None}
    try:
        return Settings(**overrides)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
