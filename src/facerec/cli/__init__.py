"""The `facerec` command. Subcommands load lazily so that `facerec serve` never imports torch."""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute"; each subcommand lives in its own module.
_COMMANDS: dict[str, str] = {
    "enroll": "facerec.cli.enroll:enroll",
    "verify": "facerec.cli.verify:verify",
    "recognize": "facerec.cli.recognize:recognize",
    "weights": "facerec.cli.weights:weights",
    "worker": "facerec.cli.worker:worker",
    "serve": "facerec.cli.serve:serve",
    "aws": "facerec.cli.aws:aws",
    "bench": "facerec.cli.bench:bench",
    "keys": "facerec.cli.keys:keys",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _COMMANDS:
            module_name, attr = _COMMANDS[cmd_name].split(":")
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name == module_name:
                    return None  # not built yet
                raise
            command: click.Command = getattr(module, attr)
            return command
        return super().get_command(ctx, cmd_name)


@click.group(cls=_LazyGroup)
@click.version_option(package_name="facerec")
def main() -> None:
    """Elastic face recognition: photo in, name out."""
