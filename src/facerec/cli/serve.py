"""`facerec serve`: the web tier and the scaler in one process (never imports torch).

On the embedded default the scaler starts `facerec worker` subprocesses on this machine; with
`--backend aws` it starts and stops the app-tier EC2 instances instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from pathlib import Path
from typing import Any

import click

from facerec.cli.model_options import UNKNOWN_THRESHOLD, UNKNOWN_THRESHOLD_HELP
from facerec.cli.text import plural
from facerec.gallery_file import GalleryFileError, gallery_people, gallery_unknown_threshold
from facerec.logs import configure_logging
from facerec.ports import Lease, WebMember
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


def deployment_line(
    settings: Settings,
    web_id: str | None,
    members: list[WebMember],
    scaler: Lease | None,
    now: float,
    processes: int = 1,
) -> str:
    """What this `facerec serve` is in its deployment: the first web process, or one joining those running
    (their ids and addresses, and who runs the scaler). `web_id` None: several processes of this command."""
    live = [m for m in members if m.live_at(now, settings.web_stale_s)]
    these = f"as web id {web_id}" if web_id else f"as {processes} web processes on this port"
    if not live:
        more = f"`facerec serve --port {settings.port + 1}` with the same data directory (or prefix) joins it"
        return f"deployment: first web process ({these}); {more}"
    holder = scaler.holder if scaler is not None and scaler.live_at(now) else None
    leader = next((m for m in live if m.web_id == holder), None)
    running = ", ".join(f"{m.web_id} at {m.address or '?'}" for m in live)
    scaler_text = (
        f"the scaler runs in {leader.web_id} at {leader.address or '?'}"
        if leader is not None
        else "the scaler goes to the first process that asks"
    )
    joins = plural(len(live), "running web process", "running web processes")
    return f"deployment: joins {joins} ({running}) {these}; {scaler_text}"


def read_deployment(settings: Settings) -> tuple[list[WebMember], Lease | None] | None:
    """The deployment's members and scaler lease as stored, or None where the data tier cannot say."""
    import asyncio

    from facerec.backend import open_data_tier
    from facerec.ports import PortError
    from facerec.scaler.leadership import SCALER_LEASE

    async def read() -> tuple[list[WebMember], Lease | None] | None:
        async with open_data_tier(settings) as data:
            if data.coordination is None:
                return None
            return await data.coordination.members(), await data.coordination.lease(SCALER_LEASE)

    try:
        return asyncio.run(read())
    except PortError:
        return None  # the service's own start reports what is wrong with the data tier


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
@click.option(
    "--web-processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Web processes behind this one port (local backend; uvicorn's workers). They form one deployment with "
    "any other `facerec serve` on the same data directory: one scaler, answers addressed to their process.",
)
@click.option("--log-level", default="INFO", show_default=True)
def serve(log_level: str, web_processes: int, **options: Any) -> None:
    """Run the service: web tier on HOST:PORT, workers scaled from 0 with the requests in flight."""
    import uvicorn

    from facerec.web.deployment import new_web_id
    from facerec.web.serve_app import serve_app

    overrides = {key: value for key, value in options.items() if value is not None}
    if "gallery" in overrides:
        overrides["gallery"] = str(Path(overrides["gallery"]).expanduser().resolve())
    if "data_dir" in overrides:
        overrides["data_dir"] = overrides["data_dir"].expanduser().resolve()
    settings = Settings(**overrides)
    if web_processes > 1 and settings.backend != "local":
        raise click.UsageError(
            "--web-processes is for the local backend; on AWS run one `facerec serve` per host (or several with "
            "different ports) behind a load balancer: they join one deployment by their prefix"
        )
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

    web_id = new_web_id() if web_processes == 1 else None
    deployment = read_deployment(settings)
    if deployment is not None:
        lines.insert(-1, deployment_line(settings, web_id, *deployment, now=time.time(), processes=web_processes))
    first, *rest = lines
    click.echo(first)
    for line in rest:
        click.echo(line, err=True)
    if web_processes > 1:
        serve_several(settings, sock, web_processes, log_level)
        return
    app, service = serve_app(settings, web_id)
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


def serve_several(settings: Settings, sock: socket.socket, processes: int, log_level: str) -> None:
    """N web processes on one listening socket: uvicorn's supervisor (`workers=N`) passes the socket bound here
    to N fresh interpreters, which accept from it in turn, restarts one that dies, and on Ctrl-C (or SIGTERM)
    stops them all, each draining and leaving its deployment (the one running the scaler stops the workers).
    Chosen over SO_REUSEPORT children of our own: the supervisor, its signal handling and its restarts exist."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from facerec.web.serve_app import LOG_LEVEL_ENV

    os.environ[LOG_LEVEL_ENV] = log_level
    config = uvicorn.Config(
        "facerec.web.serve_app:serve_app_from_environment",
        factory=True,
        workers=processes,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
    )
    Multiprocess(config, sockets=[sock]).run()


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
