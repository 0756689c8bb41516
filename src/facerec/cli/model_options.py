"""Model settings as command-line options, shared by `facerec enroll` and `facerec recognize`.

Each option overrides its `FACEREC_*` environment variable only when given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from facerec.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


class UnknownThreshold(click.ParamType["float | str"]):
    """A positive distance, or `none` (closed set: never Unknown)."""

    name = "DISTANCE|none"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float | str:
        if isinstance(value, float) or (isinstance(value, str) and value.strip().lower() == "none"):
            return value if isinstance(value, float) else "none"
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a distance nor `none`", param, ctx)
        if number <= 0:
            self.fail(f"{value!r}: a distance must be positive", param, ctx)
        return number


UNKNOWN_THRESHOLD = UnknownThreshold()
UNKNOWN_THRESHOLD_HELP = (
    "Distance beyond which a face is answered Unknown; `none`: closed set, always the nearest name "
    "(default: the gallery's recorded threshold, else the calibrated one for its weights) "
    "[env FACEREC_UNKNOWN_THRESHOLD]."
)

_OPTIONS = [
    click.option("--weights", help="`casia-webface`, `vggface2` or a state_dict path [env FACEREC_WEIGHTS]."),
    click.option("--crop-size", type=int, help="Face crop size in pixels [env FACEREC_CROP_SIZE]."),
    click.option("--margin", type=int, help="Margin around the face, in crop pixels [env FACEREC_MARGIN]."),
    click.option("--min-face-size", type=int, help="Smallest face MTCNN looks for [env FACEREC_MIN_FACE_SIZE]."),
    click.option("--unknown-threshold", type=UNKNOWN_THRESHOLD, help=UNKNOWN_THRESHOLD_HELP),
    click.option(
        "--flip-tta/--no-flip-tta",
        default=None,
        help="Average each face's embedding with its mirror's [env FACEREC_FLIP_TTA].",
    ),
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
