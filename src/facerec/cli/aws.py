"""`facerec aws provision|teardown|status|policy`: set up and inspect one deployment's AWS resources.

A failure is one sentence naming the resource and the fix (`--debug` shows the traceback); `status` exits
1 when a bucket or queue is missing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click

from facerec.logs import configure_logging
from facerec.settings import Settings

_common = [
    click.option("--prefix", help="Resource name prefix (default: settings)."),
    click.option("--region", "aws_region", help="AWS region (default: settings)."),
    click.option("--endpoint-url", "aws_endpoint_url", help="Another S3/SQS/EC2 endpoint (moto, LocalStack)."),
    click.option("--debug", is_flag=True, help="Show the traceback of a failure."),
]


def common_options(command: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_common):
        command = option(command)
    return command


def settings_from(overrides: dict[str, Any]) -> Settings:
    return Settings(backend="aws", **{key: value for key, value in overrides.items() if value is not None})


def run_and_print(settings: Settings, job: Callable[[Any], Awaitable[list[Any]]], debug: bool = False) -> list[Any]:
    from facerec.adapters.aws_session import AwsClients
    from facerec.aws_errors import LastCall, explain

    call = LastCall()

    async def main() -> list[Any]:
        async with AwsClients(settings, on_call=call) as aws:
            return await job(aws)

    try:
        actions = asyncio.run(main())
    except Exception as exc:
        sentence = explain(exc, call, settings)
        if debug or sentence is None:
            raise
        raise click.ClickException(sentence) from None
    for action in actions:
        click.echo(str(action))
    return actions


@click.group()
def aws() -> None:
    """Provision, inspect and remove the AWS resources of one deployment (named by its prefix)."""
    configure_logging("WARNING")


@aws.command()
@common_options
@click.option("--pool", type=click.IntRange(0, 99), default=0, help="Create app-tier-instance-1..N, stopped.")
@click.option("--ami", help="AMI of the app-tier instances (required with --pool; default: settings).")
@click.option("--instance-type", help="Default: settings (t3.small).")
@click.option(
    "--instance-profile",
    help="IAM instance profile of the workers (default: settings; with --create-roles: <prefix>-worker-profile).",
)
@click.option(
    "--create-roles",
    is_flag=True,
    help="Create the web and worker roles (policies from `facerec aws policy`) and their instance profiles.",
)
@click.option(
    "--user-data",
    "user_data_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="User data template (default: the one shipped in the package, facerec/deploy/aws/worker-user-data.sh).",
)
@click.option(
    "--wheel",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="facerec wheel (`pip wheel --no-deps -w dist .`) the instances install at first boot, uploaded to the "
    "gallery bucket; without it the AMI must have /opt/facerec/venv already.",
)
@click.option("--torch-index", help="With --wheel on a stock image: the pip index of CPU torch builds.")
@click.option(
    "--calibration-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Face photos (e.g. the ones you enroll; up to 192 are uploaded to the gallery bucket) each instance "
    "calibrates its int8 model on at first boot (with --pool). Without it they embed in fp32, more slowly.",
)
def provision(
    pool: int,
    wheel: Path | None,
    torch_index: str | None,
    calibration_dir: Path | None,
    ami: str | None,
    instance_type: str | None,
    instance_profile: str | None,
    create_roles: bool,
    user_data_path: Path | None,
    debug: bool,
    **overrides: Any,
) -> None:
    """Create the buckets (inputs and results expire after FACEREC_AWS_OBJECT_EXPIRY_DAYS), the queues (request
    queue redriving to the DLQ), optionally the IAM roles and the stopped pool. Idempotent: what exists is
    reported and left alone (queue attributes, expiry rules and role policies are brought to the settings)."""
    from facerec import provision as steps
    from facerec.iam_roles import role_names

    settings = settings_from(overrides)
    spec = None
    if not pool and (wheel or torch_index or calibration_dir):
        raise click.UsageError("--wheel, --torch-index and --calibration-dir are for the pool's instances: add --pool")
    if pool:
        ami = ami or settings.aws_ami_id
        if not ami:
            raise click.UsageError("--pool needs --ami (or FACEREC_AWS_AMI_ID)")
        profile = instance_profile or settings.aws_instance_profile
        if profile is None and create_roles:
            profile = role_names(settings, "worker").profile
        spec = steps.PoolSpec(
            size=pool,
            ami=ami,
            instance_type=instance_type or settings.aws_instance_type,
            instance_profile=profile,
            user_data_template=user_data_path or steps.USER_DATA,
            wheel=wheel,
            torch_index=torch_index or "",
        )
        try:  # render once now: a value that cannot go into the script is refused before anything is made
            if wheel is not None:
                steps.check_wheel_name(wheel)
            if calibration_dir is not None:
                spec = dataclasses.replace(spec, calibration_photos=steps.calibration_photos(calibration_dir))
            steps.render_user_data(settings, spec.user_data_template, steps.WheelSource("", "", spec.torch_index))
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    actions = run_and_print(
        settings,
        lambda clients: steps.provision(
            clients, settings, spec, create_roles=create_roles, progress=lambda line: click.echo(line, err=True)
        ),
        debug,
    )
    if any(action.problem for action in actions):
        raise SystemExit(1)


@aws.command()
@common_options
@click.option("--yes", is_flag=True, help="Really delete (without it, only show what would go).")
def teardown(yes: bool, debug: bool, **overrides: Any) -> None:
    """Terminate the app-tier instances, delete the queues, empty and delete the buckets, and remove the roles
    and instance profiles `provision --create-roles` made."""
    from facerec import provision as steps

    settings = settings_from(overrides)
    if not yes:
        click.echo("Would remove (pass --yes to do it):")
        run_and_print(settings, lambda clients: steps.status(clients, settings), debug)
        raise SystemExit(1)
    run_and_print(settings, lambda clients: steps.teardown(clients, settings), debug)


@aws.command()
@common_options
def status(debug: bool, **overrides: Any) -> None:
    """Buckets with object counts and expiry, queues with message counts, roles, app-tier instances with their
    state. Exits 1 when a bucket or queue is missing (run `facerec aws provision`)."""
    from facerec import provision as steps

    settings = settings_from(overrides)
    actions = run_and_print(settings, lambda clients: steps.status(clients, settings), debug)
    missing = [a.name for a in actions if a.kind in ("bucket", "queue") and a.outcome == "absent"]
    if missing:
        click.echo(
            f"missing: {', '.join(missing)}; create them with `facerec aws provision --prefix {settings.prefix}`",
            err=True,
        )
        raise SystemExit(1)


@aws.command()
@common_options
@click.argument("role", type=click.Choice(["web", "worker"]))
@click.option("--account", required=True, help="The 12-digit AWS account id.")
@click.option("--fleet-mode", type=click.Choice(["pool", "run"]), help="Default: settings.")
def policy(role: str, account: str, fleet_mode: str | None, debug: bool, **overrides: Any) -> None:
    """Print the least-privilege IAM policy of the web or worker role for this deployment."""
    from facerec.provision import render_policy

    settings = settings_from({**overrides, "fleet_mode": fleet_mode})
    try:
        document = render_policy(role, settings, account)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--account") from exc
    click.echo(json.dumps(document, indent=2))
