"""`facerec worker`: one app-tier worker process (batched recognition from the request queue)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from facerec.logs import configure_logging
from facerec.settings import Settings


@click.command()
@click.option("--backend", type=click.Choice(["local", "aws"]), help="Data tier (default: settings).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Local backend's directory.")
@click.option("--prefix", help="Resource name prefix.")
@click.option("--gallery", help="Gallery file (or `blob:<key>`).")
@click.option("--weights", help="`casia-webface`, `vggface2` or a state_dict path.")
@click.option("--batch-max", type=int, help="Largest batch per inference call.")
@click.option("--batch-fill-wait-ms", type=float, help="How long to wait for a batch to fill.")
@click.option("--visibility-timeout", "visibility_timeout_s", type=float, help="Request visibility timeout (s).")
@click.option("--max-receives", type=int, help="Deliveries after which a request is processed alone.")
@click.option("--prefetch/--no-prefetch", "worker_prefetch", default=None, help="Overlap fetch with inference.")
@click.option("--torch-threads", type=int, help="Intra-op threads for inference.")
@click.option("--name", help="Name in answers and logs (default: $FACEREC_WORKER_NAME, EC2 instance id, host-pid).")
@click.option("--ready-file", type=click.Path(dir_okay=False, path_type=Path), help="Create once ready.")
@click.option("--log-level", default="INFO", show_default=True)
@click.option(
    "--recognizer-factory",
    hidden=True,
    envvar="FACEREC_WORKER_RECOGNIZER_FACTORY",
    help="module:callable building the recognizer (tests and benchmarks of the service without the model).",
)
def worker(
    name: str | None,
    ready_file: Path | None,
    log_level: str,
    recognizer_factory: str | None,
    **overrides: Any,
) -> None:
    """Run one worker: load the model, then recognize batches from the request queue until SIGTERM."""
    from facerec.worker.memory import lean_worker_process

    lean_worker_process()  # before torch is imported or any thread starts
    from facerec.worker.service import exit_now, import_factory, load_recognizer, run_worker

    configure_logging(log_level.upper())
    settings = Settings(**{key: value for key, value in overrides.items() if value is not None})
    factory = import_factory(recognizer_factory) if recognizer_factory else load_recognizer
    run_worker(settings, factory, name=name, ready_file=ready_file)
    # Stopped cleanly: every message is settled or released and the data tier closed. Skip the interpreter's
    # teardown, which spends 1.5-4 s unloading torch (measured here) while the fleet waits for the exit.
    exit_now()
