"""`facerec bench <name>`: benchmarks that print numbers and write them to a JSON file."""

from __future__ import annotations

import importlib

import click

# name -> module exposing a click command called `command`
_BENCHMARKS: dict[str, str] = {
    "accuracy": "facerec.bench.accuracy",
    "model": "facerec.bench.model",
    "queue": "facerec.bench.queue",
    "worker": "facerec.bench.worker",
    "web": "facerec.bench.web",
    "load": "facerec.bench.load",
    "stack": "facerec.bench.stack",
    "elastic": "facerec.bench.elastic",
    "start": "facerec.bench.start",
}


class _LazyBenchGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_BENCHMARKS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = _BENCHMARKS.get(cmd_name)
        if module_name is None:
            return None
        try:
            command: click.Command = importlib.import_module(module_name).command
            return command
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise


@click.group(cls=_LazyBenchGroup)
def bench() -> None:
    """Measure the recognizer, the queue, the worker, the web tier, or the whole service under load."""
