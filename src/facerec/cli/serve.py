"""`facerec serve`: the web tier and the scaler in one process (never imports torch).

On the embedded default the scaler starts `facerec worker` subprocesses on this machine; with
`--backend aws` it starts and stops the app-tier EC2 instances instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from facerec.logs import configure_logging
from facerec.settings import Settings


def export_for_workers(overrides: dict[str, Any]) -> None:
    """Worker subprocesses read their settings from the environment: pass on what the command line set."""
    for key, value in overrides.items():
        os.environ[f"FACEREC_{key.upper()}"] = str(value)


@click.command()
@click.option("--host", help="Interface to listen on (default 127.0.0.1: this machine only).")
@click.option("--port", type=int, help="Port (default 8000).")
@click.option("--gallery", help="Gallery file made by `facerec enroll` (without one, every answer is Unknown).")
@click.option("--backend", type=click.Choice(["local", "aws"]), help="Data tier and fleet (default: local).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Local backend's directory.")
@click.option("--prefix", help="Resource name prefix (buckets, queues).")
@click.option("--max-workers", type=click.IntRange(min=0), help="Most workers at once (default: cores / 15 on AWS).")
@click.option("--min-workers", type=click.IntRange(min=0), help="Workers kept running when idle (default 0).")
@click.option("--weights", help="Worker weights: `casia-webface`, `vggface2` or a state_dict path.")
@click.option("--unknown-threshold", type=float, help="Distance beyond which the answer is `Unknown`.")
@click.option("--log-level", default="INFO", show_default=True)
def serve(log_level: str, **options: Any) -> None:
    """Run the service: web tier on HOST:PORT, workers scaled from 0 with the requests in flight."""
    import uvicorn

    from facerec.scaler.service import ScalerService
    from facerec.web.app import create_app

    overrides = {key: value for key, value in options.items() if value is not None}
    if "gallery" in overrides:
        gallery = Path(overrides["gallery"]).expanduser().resolve()
        if not gallery.is_file():
            raise click.BadParameter(f"{gallery} is not a file", param_hint="--gallery")
        overrides["gallery"] = str(gallery)
    if "data_dir" in overrides:
        overrides["data_dir"] = overrides["data_dir"].expanduser().resolve()
    settings = Settings(**overrides)
    export_for_workers(overrides)
    configure_logging(log_level.upper())

    service = ScalerService(settings)
    app = create_app(settings, worker_count=service.worker_count, companions=[service.companion])
    url = f"http://{settings.host}:{settings.port}"
    click.echo(f"facerec on {url}  (docs: {url}/docs, metrics: {url}/metrics)")
    click.echo(f"backend: {settings.backend}, workers: {settings.min_workers}..{settings.max_workers}", err=True)
    if settings.backend == "local":
        click.echo(f"data: {settings.data_dir}", err=True)
    if not settings.gallery:
        click.echo(
            "no gallery: every face is answered `Unknown`. Make one with "
            "`facerec enroll PHOTOS_DIR --gallery gallery.pt`, then `facerec serve --gallery gallery.pt`.",
            err=True,
        )
    click.echo("try: curl -F inputFile=@photo.jpg " + url + "/   (Ctrl-C stops the service and its workers)", err=True)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 5,
    )
