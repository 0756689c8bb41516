"""`facerec keys create|list|revoke`: the service's API keys, kept as hashes in the deployment's gallery store
(`<data dir>/blobs/<prefix>-gallery-bucket/api-keys/` locally, `s3://<prefix>-gallery-bucket/api-keys/` on AWS)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from facerec import api_keys
from facerec.ports import BlobStore, PortError
from facerec.settings import Settings

T = TypeVar("T")


def _deployment_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--prefix", help="Resource name prefix of the deployment (default: facerec).")(command)
    command = click.option(
        "--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Local backend's data directory."
    )(command)
    return click.option(
        "--backend", type=click.Choice(["local", "aws"]), help="Where the service keeps its data (default: local)."
    )(command)


def _with_store(options: dict[str, Any], work: Callable[[BlobStore], Awaitable[T]]) -> T:
    from facerec.backend import open_data_tier

    overrides = {key: value for key, value in options.items() if value is not None}
    if "data_dir" in overrides:
        overrides["data_dir"] = overrides["data_dir"].expanduser().resolve()
    settings = Settings(**overrides)

    async def run() -> T:
        async with open_data_tier(settings) as data:
            if data.gallery is None:
                raise click.ClickException("this deployment has no gallery store to keep keys in")
            return await work(data.gallery)

    try:
        return asyncio.run(run())
    except PortError as exc:
        raise click.ClickException(f"cannot reach the key store: {exc}") from None


@click.group()
def keys() -> None:
    """API keys: `manage` keys enroll and delete people, `recognize` keys recognize (when the server needs one)."""


@keys.command()
@click.option("--role", type=click.Choice(api_keys.ROLES), required=True, help="What the key may do.")
@click.option("--name", default="", help="A label for `facerec keys list` (who or what uses the key).")
@_deployment_options
def create(role: api_keys.Role, name: str, **options: Any) -> None:
    """Make a key and print it once, alone on the last line (only its hash is stored)."""
    if len(name) > api_keys.NAME_MAX_CHARS:
        raise click.BadParameter(f"at most {api_keys.NAME_MAX_CHARS} characters", param_hint="--name")
    key, record = _with_store(options, lambda store: api_keys.create_key(store, role, name))
    click.echo(f"created {record.role} key {record.id}{f' ({name})' if name else ''}; it is shown only now:", err=True)
    click.echo(key)


@keys.command(name="list")
@_deployment_options
def list_(**options: Any) -> None:
    """One line per key: id, role, created (UTC), name. Keys themselves are never shown again."""
    records = _with_store(options, api_keys.list_keys)
    if not records:
        click.echo("no keys (create one with `facerec keys create --role manage`)", err=True)
    for record in records:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created_at))
        click.echo(f"{record.id}  {record.role:<9}  {created}  {record.name}".rstrip())


@keys.command()
@click.argument("key_id")
@_deployment_options
def revoke(key_id: str, **options: Any) -> None:
    """Delete key KEY_ID (from `facerec keys list`): it stops working at the server's next request."""
    if not _with_store(options, lambda store: api_keys.revoke_key(store, key_id)):
        raise click.ClickException(f"no key with id {key_id!r} (see `facerec keys list`)")
    click.echo(f"revoked {key_id}", err=True)
