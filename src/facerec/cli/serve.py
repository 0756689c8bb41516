"""`facerec serve`: the web tier and the scaler in one process (never imports torch).

On the embedded default the scaler starts `facerec worker` subprocesses on this machine; with
`--backend aws` it starts and stops the app-tier EC2 instances instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from pathlib import Path
from typing import Any

import click

from facerec.cli.model_options import UNKNOWN_THRESHOLD, UNKNOWN_THRESHOLD_HELP
from facerec.cli.text import plural
from facerec.gallery_file import GalleryFileError, gallery_people, gallery_unknown_threshold
from facerec.logs import configure_logging
from facerec.recognition.thresholds import ThresholdUnavailable, describe_recognition_threshold
from facerec.settings import Settings
from facerec.web.auth import is_exposed


def export_for_workers(overrides: dict[str, Any]) -> None:
    """Worker subprocesses read their settings from the environment: pass on what the command line set."""
    for key, value in overrides.items():
        os.environ[f"FACEREC_{key.upper()}"] = str(value)


def listening_socket(host: str, port: int) -> socket.socket:
    """The web tier's socket, bound before anything is printed or started: a taken port is then reported in
    one sentence instead of after the banner, and no data directory or queue is created for nothing."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    # As uvicorn does: a restarted service can bind while the old connections sit in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def bind_problem(host: str, port: int, exc: OSError) -> str:
    """One sentence for the person at the terminal: which address, and the option that changes it."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{host}:{port} is already in use (is facerec already running?); "
            f"choose another port with --port, e.g. `facerec serve --port {port + 1 if port < 65535 else 8080}`."
        )
    return f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another address with --host or --port."


def banner(settings: Settings, gallery_people: dict[str, int] | None, recorded: float | None = None) -> list[str]:
    """What `facerec serve` tells its user once it can listen: where it answers, what it knows, where the data
    lives. The first line goes to stdout, the rest to stderr. `recorded`: the gallery's own Unknown threshold.
    Raises ThresholdUnavailable as the workers would (the same `recognition_threshold`)."""
    url = f"http://{settings.host}:{settings.port}"
    lines = [f"facerec on {url}  (docs: {url}/docs, metrics: {url}/metrics)"]
    if gallery_people is None:
        lines.append(
            "no gallery: every face is answered `Unknown`. Make one with "
            "`facerec enroll PHOTOS_DIR --gallery gallery.pt`, then `facerec serve --gallery gallery.pt`."
        )
    else:
        lines.append(f"gallery: {settings.gallery} ({plural(len(gallery_people), 'person', 'people')})")
    # What the gallery's answers mean, next to the gallery. Weights named by a file path have no calibrated
    # threshold whatever their checksum, so the weights setting resolves exactly as the workers' weights id does.
    lines.append(f"unknown faces: {describe_recognition_threshold(settings, settings.weights, recorded)}")
    if settings.backend == "local":
        lines.append(f"data: {settings.data_dir} (local backend)")
    else:
        lines.append(
            f"data: AWS {settings.aws_region}, buckets and queues named {settings.prefix}-* "
            f"(e.g. {settings.in_bucket}, {settings.req_queue})"
        )
    where = "subprocesses on this machine" if settings.backend == "local" else "EC2 instances"
    scaled = f"{settings.min_workers}..{settings.max_workers}"
    lines.append(f"workers: {scaled} ({where}, scaled with the requests in flight)")
    if is_exposed(settings):
        # Said at start-up: enrolling and deleting answer 403 until a manage key exists (README, Security).
        lines.append(
            "access: reachable from other machines; enrolling and deleting people need a manage key "
            "(`facerec keys create --role manage`)"
        )
    stops = "stops the service and its workers" if settings.stop_workers_on_exit else "stops the service only"
    lines.append(f"try: curl -F inputFile=@photo.jpg {url}/   (Ctrl-C {stops})")
    return lines


@click.command()
@click.option("--host", help="Interface to listen on (default 127.0.0.1: this machine only).")
@click.option("--port", type=int, help="Port (default 8000).")
@click.option("--gallery", help="Gallery file made by `facerec enroll` (without one, every answer is Unknown).")
@click.option("--backend", type=click.Choice(["local", "aws"]), help="Data tier and fleet (default: local).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Local backend's directory.")
@click.option("--prefix", help="Resource name prefix (buckets, queues).")
@click.option(
    "--max-workers",
    type=click.IntRange(min=0),
    help="Most workers at once (default: the number of cores locally, 15 on AWS).",
)
@click.option("--min-workers", type=click.IntRange(min=0), help="Workers kept running when idle (default 0).")
@click.option("--weights", help="Worker weights: `casia-webface`, `vggface2` or a state_dict path.")
@click.option("--unknown-threshold", type=UNKNOWN_THRESHOLD, help=UNKNOWN_THRESHOLD_HELP)
@click.option("--flip-tta/--no-flip-tta", default=None, help="Workers average each face's embedding with its mirror's.")
@click.option(
    "--leave-workers",
    "stop_workers_on_exit",
    flag_value=False,
    default=None,
    help="On Ctrl-C leave running workers running (default: stop them all; EC2 instances cost money while idle).",
)
@click.option("--log-level", default="INFO", show_default=True)
def serve(log_level: str, **options: Any) -> None:
    """Run the service: web tier on HOST:PORT, workers scaled from 0 with the requests in flight."""
    import uvicorn

    from facerec.scaler.service import ScalerService
    from facerec.web.app import create_app

    overrides = {key: value for key, value in options.items() if value is not None}
    if "gallery" in overrides:
        overrides["gallery"] = str(Path(overrides["gallery"]).expanduser().resolve())
    if "data_dir" in overrides:
        overrides["data_dir"] = overrides["data_dir"].expanduser().resolve()
    settings = Settings(**overrides)
    known: dict[str, int] | None = None
    recorded: float | None = None
    if settings.gallery:  # from --gallery or FACEREC_GALLERY
        if not Path(settings.gallery).is_file():
            raise click.BadParameter(f"{settings.gallery} is not a file", param_hint="--gallery")
        try:
            known = gallery_people(settings.gallery)
            recorded = gallery_unknown_threshold(settings.gallery)
        except GalleryFileError as exc:
            raise click.BadParameter(str(exc), param_hint="--gallery") from None
    try:
        lines = banner(settings, known, recorded)
    except ThresholdUnavailable as exc:
        raise click.UsageError(str(exc)) from None
    if settings.backend == "aws" and settings.gallery:
        lines.insert(2, f"gallery uploaded for the EC2 workers: {upload_for_workers(settings)}")
    try:
        sock = listening_socket(settings.host, settings.port)
    except OSError as exc:
        click.echo(bind_problem(settings.host, settings.port, exc), err=True)
        raise SystemExit(1) from None
    export_for_workers(overrides)
    configure_logging(log_level.upper())

    service = ScalerService(settings)
    app = create_app(
        settings,
        worker_count=service.worker_count,
        worker_states=service.worker_states,
        companions=[service.companion],
    )
    first, *rest = lines
    click.echo(first)
    for line in rest:
        click.echo(line, err=True)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,  # the app logs one JSON line per request itself
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
    )
    server = uvicorn.Server(config)
    # Ctrl-C stops the server gracefully and then surfaces here; `uvicorn.run` swallows it the same way.
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    if not server.started:  # e.g. the data tier could not be opened: the log says why
        raise SystemExit(1)
    if service.left_running:
        names = ", ".join(w.name for w in service.left_running)
        click.echo(f"left running: {plural(len(service.left_running), 'worker')} ({names})", err=True)


def upload_for_workers(settings: Settings) -> str:
    """EC2 workers have no copy of the gallery file: put it where they load it from at start (the gallery
    bucket). A bucket that is missing or refuses is reported in one sentence, with the fix."""
    import asyncio

    from facerec.gallery_store import upload_gallery
    from facerec.ports import PortError

    assert settings.gallery is not None
    try:
        return asyncio.run(upload_gallery(settings, Path(settings.gallery).read_bytes()))
    except (PortError, OSError) as exc:
        raise click.ClickException(
            f"cannot upload the gallery to the bucket {settings.gallery_bucket} ({exc}); create it with "
            f"`facerec aws provision --prefix {settings.prefix}`, or serve without --gallery and use "
            f"`facerec enroll DIR --store --backend aws --prefix {settings.prefix}`"
        ) from None
