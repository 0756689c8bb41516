"""Idempotent AWS setup for one deployment: buckets, queues (with the DLQ redrive), the stopped app-tier
pool, and rendering of the IAM policies and worker user data shipped in the package's `deploy/` folder.

Every step reads before it writes, so running `provision` twice changes nothing the second time; each
returns `Action`s saying what it found or did.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from facerec.adapters.aws_session import AwsClients
from facerec.adapters.ec2_fleet import (
    FIRST_BOOT_TAG,
    GONE_STATES,
    NAME_PREFIX,
    describe_fleet,
    in_first_boot,
    instance_tags,
    name_number,
    tag_value,
)
from facerec.adapters.s3_coordination import DEPLOYMENT_PREFIX, S3Coordination
from facerec.adapters.sqs_queue import is_missing_queue
from facerec.adapters.sqs_replies import reply_queue_urls
from facerec.calibration_photos import MIN_CALIBRATION_CROPS, zip_photos
from facerec.gallery_store import BLOB_PREFIX
from facerec.iam_roles import delete_roles, ensure_roles, roles_status
from facerec.ports import WebMember
from facerec.settings import Settings

if TYPE_CHECKING:  # stubs from the `test` extra, for annotations only
    from types_aiobotocore_ec2 import EC2Client
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import ObjectIdentifierTypeDef
    from types_aiobotocore_sqs import SQSClient
    from types_aiobotocore_sqs.literals import QueueAttributeNameType

log = logging.getLogger(__name__)

DEPLOY_DIR = files("facerec") / "deploy"
"""Templates and units shipped as package data: present in a wheel install as in a source checkout."""
POLICIES: dict[str, Traversable] = {
    "web": DEPLOY_DIR / "iam" / "web-policy.json",
    "worker": DEPLOY_DIR / "iam" / "worker-policy.json",
}
USER_DATA = DEPLOY_DIR / "aws" / "worker-user-data.sh"

DLQ_RETENTION_S = 14 * 24 * 3600  # the SQS maximum: dead letters are kept for inspection
PROFILE_RETRIES, PROFILE_RETRY_S = 12, 5.0
_MISSING_BUCKET = {"404", "NoSuchBucket", "NotFound"}
_PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")
# Settings a worker instance needs besides those the systemd unit sets; written to /etc/facerec/facerec.env.
_WORKER_SETTINGS = (
    "prefix",
    "aws_region",
    "visibility_timeout_s",
    "max_receives",
    "message_max_bytes",
    "weights",
    "crop_size",
    "margin",
    "min_face_size",
    "unknown_threshold",
    "gallery",
    "course_gallery_made_with",
    "batch_max",
    "batch_fill_wait_ms",
    "shutdown_grace_s",
)


@dataclass(frozen=True, slots=True)
class Action:
    kind: str
    """bucket, rule, queue, role, profile, instance, wheel, photos."""
    name: str
    outcome: str
    """created, updated, exists, deleted, kept, terminated, absent, or (status) the resource's state."""
    detail: str = ""
    problem: bool = False
    """Something the operator must see to: the command exits 1 after printing every action."""

    def __str__(self) -> str:
        return f"{self.outcome:<10} {self.kind:<8} {self.name}" + (f"  ({self.detail})" if self.detail else "")


# --- templates ------------------------------------------------------------------------------------


def render_template(text: str, values: Mapping[str, str]) -> str:
    """Replace `${name}` for the names in `values`; anything else (shell or IAM variables such as
    `${aws:username}`) stays. Raises KeyError for a lowercase placeholder with no value."""

    def substitute(match: re.Match[str]) -> str:
        return values[match.group(1)]

    return _PLACEHOLDER.sub(substitute, text)


def policy_values(settings: Settings, account: str) -> dict[str, str]:
    return {"prefix": settings.prefix, "region": settings.aws_region, "account": account}


def render_policy(role: str, settings: Settings, account: str) -> dict[str, Any]:
    """The IAM policy document for `role` (`web` or `worker`) of this deployment.

    Statements only run mode needs (`RunMode*`) are dropped in pool mode."""
    if not re.fullmatch(r"\d{12}", account):
        raise ValueError(f"not an AWS account id: {account!r}")
    template = POLICIES[role].read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(render_template(template, policy_values(settings, account)))
    keep = []
    for statement in document["Statement"]:
        sid = statement.get("Sid", "")
        if sid.startswith("RunMode") and settings.fleet_mode != "run":
            continue
        keep.append(statement)
    document["Statement"] = keep
    return document


def worker_environment(settings: Settings) -> str:
    """The settings file of a worker instance (systemd EnvironmentFile syntax). No credentials: the
    instance profile provides them."""
    lines = []
    for key in _WORKER_SETTINGS:
        value = getattr(settings, key)
        if value is None:
            continue
        if key == "gallery" and not str(value).startswith(BLOB_PREFIX):
            # A file on this machine, not on the instances: they load the copy `serve --gallery` uploads.
            continue
        text = str(value)
        if "\n" in text or '"' in text:
            raise ValueError(f"setting {key} cannot go into an environment file: {text!r}")
        lines.append(f'FACEREC_{key.upper()}="{text}"')
    return "\n".join(lines)


WORKER_UNIT = DEPLOY_DIR / "systemd" / "facerec-worker.service"
WHEEL_PREFIX = "deploy/"
"""Where provision puts the facerec wheel, in the gallery bucket (the web and worker roles only reach
`embeddings/`, `photos/`, `generations/` and the gallery file there, all but the web role read-only)."""
WHEEL_URL_TTL_S = 24 * 3600


@dataclass(frozen=True, slots=True)
class WheelSource:
    """A presigned download of the wheel for the instances' first boot (and the index for CPU torch)."""

    url: str = ""
    name: str = ""
    torch_index: str = ""


def render_user_data(
    settings: Settings,
    template: Traversable = USER_DATA,
    wheel: WheelSource | None = None,
    calibration_url: str = "",
    *,
    stop_when_done: bool = False,
) -> str:
    """The worker instances' user data from `template` (a `pathlib.Path` works too); `calibration_url`: a
    presigned download of the photos their int8 model is calibrated on (see `upload_calibration_photos`);
    `stop_when_done`: the instance stops itself at the end of its first boot (the pool's instances)."""
    wheel = wheel or WheelSource()
    for value in (wheel.url, wheel.name, wheel.torch_index, calibration_url):
        if "'" in value or "\n" in value:
            raise ValueError(f"cannot go into a single-quoted shell string: {value!r}")
    return render_template(
        template.read_text(encoding="utf-8"),
        {
            "environment": worker_environment(settings),
            "worker_unit": WORKER_UNIT.read_text(encoding="utf-8").rstrip("\n"),
            "wheel_url": wheel.url,
            "wheel_name": wheel.name,
            "torch_index": wheel.torch_index,
            "calibration_url": calibration_url,
            "stop_when_done": "yes" if stop_when_done else "",
        },
    )


def check_wheel_name(wheel: Path) -> None:
    if not re.fullmatch(r"facerec-[^/\s']+\.whl", wheel.name):
        raise ValueError(f"{wheel.name} is not a facerec wheel (facerec-<version>-...whl)")


async def upload_wheel(s3: S3Client, settings: Settings, wheel: Path, torch_index: str = "") -> WheelSource:
    """Put the facerec wheel into the deployment's gallery bucket and presign its download: the instances
    install facerec from there at first boot, without the package index or AWS credentials."""
    check_wheel_name(wheel)
    key = WHEEL_PREFIX + wheel.name
    await s3.put_object(Bucket=settings.gallery_bucket, Key=key, Body=await asyncio.to_thread(wheel.read_bytes))
    url = await s3.generate_presigned_url(
        "get_object", Params={"Bucket": settings.gallery_bucket, "Key": key}, ExpiresIn=WHEEL_URL_TTL_S
    )
    return WheelSource(url=url, name=wheel.name, torch_index=torch_index)


CALIBRATION_KEY = WHEEL_PREFIX + "calibration-photos.zip"


def calibration_photos(folder: Path) -> tuple[bytes, int]:
    """The zip `upload_calibration_photos` sends and how many photos it holds; ValueError when too few."""
    archive, count = zip_photos(folder)
    if count < MIN_CALIBRATION_CROPS:
        raise ValueError(
            f"{folder} has {count} photos (.jpg, .jpeg, .png, searched recursively); the int8 model is calibrated "
            f"on the faces of at least {MIN_CALIBRATION_CROPS}"
        )
    return archive, count


async def upload_calibration_photos(s3: S3Client, settings: Settings, archive: bytes) -> str:
    """Put the zip of face photos from `calibration_photos` into the gallery bucket next to the wheel and presign
    its download: each instance builds its int8 model from them at first boot, on its own CPU."""
    await s3.put_object(Bucket=settings.gallery_bucket, Key=CALIBRATION_KEY, Body=archive)
    return await s3.generate_presigned_url(
        "get_object", Params={"Bucket": settings.gallery_bucket, "Key": CALIBRATION_KEY}, ExpiresIn=WHEEL_URL_TTL_S
    )


# --- buckets and queues ---------------------------------------------------------------------------


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


async def bucket_exists(s3: S3Client, name: str) -> bool:
    try:
        await s3.head_bucket(Bucket=name)
    except ClientError as exc:
        if _code(exc) in _MISSING_BUCKET:
            return False
        raise  # 403: the name belongs to someone else, which provisioning cannot fix
    return True


async def ensure_bucket(s3: S3Client, name: str, region: str) -> Action:
    if await bucket_exists(s3, name):
        return Action("bucket", name, "exists")
    kwargs: dict[str, Any] = {"Bucket": name}
    if region != "us-east-1":  # S3 rejects an explicit us-east-1 location
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    await s3.create_bucket(**kwargs)
    await s3.put_public_access_block(
        Bucket=name,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    return Action("bucket", name, "created")


LIFECYCLE_RULE_ID = "facerec-expire-requests"


async def ensure_expiry(s3: S3Client, name: str, days: int) -> Action:
    """Inputs and results are only needed while a request is answered (and for a while after, to look into
    one): a lifecycle rule deletes them `days` after they were written, so they cost nothing forever."""
    current = await bucket_expiry_days(s3, name)
    if current == days:
        return Action("rule", f"{name} expiry", "exists", f"{days} days")
    await s3.put_bucket_lifecycle_configuration(
        Bucket=name,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": LIFECYCLE_RULE_ID,
                    "Status": "Enabled",
                    "Filter": {"Prefix": ""},
                    "Expiration": {"Days": days},
                    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
                }
            ]
        },
    )
    return Action("rule", f"{name} expiry", "created" if current is None else "updated", f"{days} days")


async def bucket_expiry_days(s3: S3Client, name: str) -> int | None:
    try:
        rules = (await s3.get_bucket_lifecycle_configuration(Bucket=name)).get("Rules", [])
    except ClientError as exc:
        if _code(exc) == "NoSuchLifecycleConfiguration":
            return None
        raise
    for rule in rules:
        if rule.get("ID") == LIFECYCLE_RULE_ID and rule.get("Status") == "Enabled":
            days = rule.get("Expiration", {}).get("Days")
            return int(days) if days is not None else None
    return None


async def queue_url(sqs: SQSClient, name: str) -> str | None:
    try:
        return (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
    except ClientError as exc:
        if is_missing_queue(exc):
            return None
        raise


def _normalised(key: str, value: str) -> Any:
    if key == "RedrivePolicy":
        policy = json.loads(value)
        return (policy.get("deadLetterTargetArn"), int(policy.get("maxReceiveCount", 0)))
    return value


async def ensure_queue(
    sqs: SQSClient, name: str, attributes: Mapping[QueueAttributeNameType, str]
) -> tuple[Action, str]:
    """Create the queue, or bring the attributes we manage to `attributes`. Returns the action and URL."""
    url = await queue_url(sqs, name)
    if url is None:
        url = (await sqs.create_queue(QueueName=name, Attributes=dict(attributes)))["QueueUrl"]
        return Action("queue", name, "created"), url
    current = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])).get("Attributes", {})
    changed = {
        key: value
        for key, value in attributes.items()
        if key not in current or _normalised(key, current[key]) != _normalised(key, value)
    }
    if not changed:
        return Action("queue", name, "exists"), url
    await sqs.set_queue_attributes(QueueUrl=url, Attributes=changed)
    return Action("queue", name, "updated", ", ".join(sorted(changed))), url


def request_queue_attributes(settings: Settings, dlq_arn: str) -> dict[QueueAttributeNameType, str]:
    return {
        "MaximumMessageSize": str(settings.message_max_bytes),
        "VisibilityTimeout": str(math.ceil(settings.visibility_timeout_s)),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": settings.max_receives}),
    }


async def ensure_queues(sqs: SQSClient, settings: Settings) -> list[Action]:
    dlq_action, dlq_url = await ensure_queue(sqs, settings.dlq, {"MessageRetentionPeriod": str(DLQ_RETENTION_S)})
    attributes = await sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
    dlq_arn = attributes["Attributes"]["QueueArn"]
    req_action, _ = await ensure_queue(sqs, settings.req_queue, request_queue_attributes(settings, dlq_arn))
    resp_action, _ = await ensure_queue(sqs, settings.resp_queue, {})
    return [dlq_action, req_action, resp_action]


# --- the app-tier pool ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PoolSpec:
    size: int
    ami: str
    instance_type: str = "t3.small"
    instance_profile: str | None = None
    user_data_template: Traversable = USER_DATA
    wheel: Path | None = None
    """Uploaded to the gallery bucket; the instances install facerec from it at first boot."""
    torch_index: str = ""
    calibration_photos: tuple[bytes, int] | None = None
    """A zip of face photos and how many (`calibration_photos`), uploaded for the instances to calibrate their int8
    model on; None: they embed in fp32."""


FIRST_BOOT_LIMIT_S = 20 * 60
"""How long provision waits for a new instance's first boot (installing facerec and torch from the package
index, building the models) to end."""
_WAIT_THROUGH = frozenset({"InvalidInstanceID.NotFound", "RequestLimitExceeded", "Throttling", "ThrottlingException"})
FIRST_BOOT_POLLS_S = (0.5, 15.0)
"""The first and the longest pause between two looks at the booting instances."""


def stops_itself(template: Traversable) -> bool:
    """Whether user data from `template` stops its instance at the end of the first boot (the shipped one does)."""
    return "${stop_when_done}" in template.read_text(encoding="utf-8")


async def ensure_pool(
    ec2: EC2Client,
    settings: Settings,
    spec: PoolSpec,
    user_data: str = "",
    *,
    progress: Callable[[str], None] | None = None,
) -> list[Action]:
    """Instances `app-tier-instance-1..size`, created running (EC2 cannot create stopped ones); existing ones
    are left as they are. Their user data stops them at the end of the first boot, and this waits for that
    (up to FIRST_BOOT_LIMIT_S), also for instances an earlier provision left in their first boot: stopped earlier,
    cloud-init would never run it again. Until then they carry FIRST_BOOT_TAG, and the fleet leaves them alone.
    User data from a template that does not stop its instance: stopped once running, as soon as EC2 allows."""
    if not 0 <= spec.size <= 99:
        raise ValueError("pool size must be between 0 and 99")
    existing = {
        name_number(tag_value(i, "Name") or ""): i
        for i in await describe_fleet(ec2, settings.prefix)
        if i["State"]["Name"] not in GONE_STATES
    }
    kept = [existing[n] for n in sorted(k for k in existing if k is not None and k <= spec.size)]
    actions = [
        Action("instance", tag_value(i, "Name") or "", "exists", f"{i['InstanceId']}, {i['State']['Name']}")
        for i in kept
        if not in_first_boot(i)
    ]
    # Whatever their number: one above the size asked for now still joins the pool once booted.
    booting = [
        (existing[n]["InstanceId"], tag_value(existing[n], "Name") or "", "exists")
        for n in sorted(existing, key=lambda number: number or 0)
        if in_first_boot(existing[n])
    ]
    missing = [n for n in range(1, spec.size + 1) if n not in existing]
    first_boot_tag = stops_itself(spec.user_data_template)
    created = await asyncio.gather(
        *(_run_pool_instance(ec2, settings, spec, n, user_data, first_boot_tag) for n in missing)
    )
    if created and not first_boot_tag:
        ids = [instance_id for instance_id, _ in created]
        await ec2.get_waiter("instance_running").wait(InstanceIds=ids, WaiterConfig={"Delay": 5, "MaxAttempts": 60})
        await ec2.stop_instances(InstanceIds=ids)
        actions += [Action("instance", name, "created", f"{instance_id}, stopping") for instance_id, name in created]
    else:
        booting += [(instance_id, name, "created") for instance_id, name in created]
    if booting:
        actions += await _finish_first_boots(ec2, booting, progress)
    return actions


async def _finish_first_boots(
    ec2: EC2Client, booting: list[tuple[str, str, str]], progress: Callable[[str], None] | None
) -> list[Action]:
    """Wait for (id, name, outcome) instances to stop themselves; each then joins the pool (FIRST_BOOT_TAG off)."""
    if progress is not None:
        progress(
            f"waiting for {len(booting)} instance(s) to finish their first boot and stop (installing facerec, "
            f"building the models; up to {_age(FIRST_BOOT_LIMIT_S)})"
        )
    ended = await wait_for_first_boots(
        ec2, [instance_id for instance_id, _, _ in booting], FIRST_BOOT_LIMIT_S, progress
    )
    actions = []
    for instance_id, name, outcome in booting:
        end = ended.get(instance_id)
        if end is not None and end.ready:
            detail = f"{instance_id}, stopped after its first boot ({_age(end.seconds)})"
            actions.append(Action("instance", name, outcome, detail))
            continue
        if end is not None and end.state == "terminated":
            detail = f"{instance_id}, terminated during its first boot: run provision again to replace it"
        elif end is not None:
            detail = (
                f"{instance_id}, stopped by someone ({end.reason or 'no reason given'}) before its first boot ended, "
                "so it may have no worker and stays out of the pool: terminate it and provision again"
            )
        else:
            detail = (
                f"{instance_id}, still running after {_age(FIRST_BOOT_LIMIT_S)}: its first boot is slow or failed; "
                f"`aws ec2 get-console-output --instance-id {instance_id}` ends with 'facerec: first boot failed' if "
                "it failed (terminate it and provision again); a slow one stops itself, then provision again adds "
                "it to the pool"
            )
        actions.append(Action("instance", name, outcome, detail, problem=True))
    return actions


SELF_STOP_REASONS = frozenset({"Client.InstanceInitiatedShutdown"})
"""EC2's StateReason of an instance that powered itself off, as the user data does at the end of a first boot. A
stop through the API (Client.UserInitiatedShutdown) could have cut the boot short."""


@dataclass(frozen=True, slots=True)
class FirstBootEnd:
    state: str
    """`stopped` or `terminated`."""
    reason: str
    """EC2's StateReason code."""
    seconds: float

    @property
    def ready(self) -> bool:
        """Stopped by itself, at the end of its first boot: it has a worker from its next start on."""
        return self.state == "stopped" and self.reason in SELF_STOP_REASONS


async def wait_for_first_boots(
    ec2: EC2Client, ids: list[str], within_s: float, progress: Callable[[str], None] | None = None
) -> dict[str, FirstBootEnd]:
    """How each of `ids` that stopped or terminated within `within_s` ended its first boot (the others are
    still booting). An instance that stopped itself joins the pool at once: its FIRST_BOOT_TAG is removed."""
    started = time.monotonic()
    ended: dict[str, FirstBootEnd] = {}
    tagged: list[str] = []
    pause, longest = FIRST_BOOT_POLLS_S
    while (len(ended) < len(ids) or tagged) and time.monotonic() - started < within_s:
        await asyncio.sleep(min(pause, max(0.0, within_s - (time.monotonic() - started))))
        pause = min(pause * 2, longest)
        waiting = [i for i in ids if i not in ended]
        try:
            if tagged:
                await ec2.delete_tags(Resources=tagged, Tags=[{"Key": FIRST_BOOT_TAG}])
                tagged = []
            instances = []
            if waiting:
                reply = await ec2.describe_instances(InstanceIds=waiting)
                instances = [i for r in reply["Reservations"] for i in r["Instances"]]
        except (ClientError, BotoConnectionError, HTTPClientError) as exc:
            # EC2 is eventually consistent (an instance just made may not be listed yet), throttles, and a
            # network may blip: none of that ends a wait of minutes. Anything else (credentials) does.
            if isinstance(exc, ClientError) and _code(exc) not in _WAIT_THROUGH:
                raise
            continue
        for instance in instances:
            state = instance["State"]["Name"]
            if state not in ("stopped", "terminated"):
                continue
            reason = instance.get("StateReason", {}).get("Code", "")
            end = FirstBootEnd(state, reason, time.monotonic() - started)
            ended[instance["InstanceId"]] = end
            tagged += [instance["InstanceId"]] if end.ready else []
            if progress is not None:
                how = "ready" if end.ready else state if state == "terminated" else f"stopped ({reason})"
                progress(f"{instance['InstanceId']} is {how} ({len(ended)} of {len(ids)})")
    if tagged:  # the last ones seen, or the deadline came first
        await ec2.delete_tags(Resources=tagged, Tags=[{"Key": FIRST_BOOT_TAG}])
    return ended


async def _run_pool_instance(
    ec2: EC2Client, settings: Settings, spec: PoolSpec, number: int, user_data: str, first_boot_tag: bool
) -> tuple[str, str]:
    name = f"{NAME_PREFIX}{number}"
    tags = instance_tags(name, settings.prefix)
    # Until it stops itself after its first boot: the fleet leaves it alone (see FIRST_BOOT_TAG).
    booting = [{"Key": FIRST_BOOT_TAG, "Value": "1"}] if first_boot_tag else []
    kwargs: dict[str, Any] = {
        "ImageId": spec.ami,
        "InstanceType": spec.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "UserData": user_data,
        # An OS-level shutdown stops the instance (it stays in the pool) rather than terminating it.
        "InstanceInitiatedShutdownBehavior": "stop",
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": [*tags, *booting]},
            {"ResourceType": "volume", "Tags": tags},
        ],
    }
    if spec.instance_profile:
        kwargs["IamInstanceProfile"] = {"Name": spec.instance_profile}
    for attempt in range(PROFILE_RETRIES + 1):
        try:
            reply = await ec2.run_instances(**kwargs)
            break
        except ClientError as exc:
            # A profile made seconds ago (--create-roles) takes a while to reach EC2: IAM is eventually consistent.
            young_profile = _code(exc) == "InvalidParameterValue" and "profile" in str(exc).lower()
            if not (spec.instance_profile and young_profile and attempt < PROFILE_RETRIES):
                raise
            await asyncio.sleep(PROFILE_RETRY_S)
    return reply["Instances"][0]["InstanceId"], name


# --- commands -------------------------------------------------------------------------------------


async def provision(
    aws: AwsClients,
    settings: Settings,
    pool: PoolSpec | None = None,
    *,
    create_roles: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[Action]:
    s3 = await aws.s3()
    actions = [
        await ensure_bucket(s3, name, settings.aws_region)
        for name in (settings.in_bucket, settings.out_bucket, settings.gallery_bucket)
    ]
    for name in (settings.in_bucket, settings.out_bucket):
        actions.append(await ensure_expiry(s3, name, settings.aws_object_expiry_days))
    actions += await ensure_queues(await aws.sqs(), settings)
    if create_roles:
        actions += await ensure_roles(aws, settings)
    if pool is not None:
        wheel = None
        if pool.wheel is not None:
            wheel = await upload_wheel(s3, settings, pool.wheel, pool.torch_index)
            actions.append(Action("wheel", f"s3://{settings.gallery_bucket}/{WHEEL_PREFIX}{wheel.name}", "uploaded"))
        calibration_url = ""
        if pool.calibration_photos is not None:
            archive, count = pool.calibration_photos
            calibration_url = await upload_calibration_photos(s3, settings, archive)
            location = f"s3://{settings.gallery_bucket}/{CALIBRATION_KEY}"
            actions.append(Action("photos", location, "uploaded", f"{count}, to calibrate the int8 model on"))
        user_data = render_user_data(settings, pool.user_data_template, wheel, calibration_url, stop_when_done=True)
        actions += await ensure_pool(await aws.ec2(), settings, pool, user_data, progress=progress)
    for action in actions:
        log.info("provisioned", extra={"kind": action.kind, "resource": action.name, "outcome": action.outcome})
    return actions


async def teardown(aws: AwsClients, settings: Settings) -> list[Action]:
    """Terminate the app tier, delete the queues, empty and delete the buckets."""
    actions: list[Action] = []
    ec2 = await aws.ec2()
    alive = [i for i in await describe_fleet(ec2, settings.prefix) if i["State"]["Name"] != "terminated"]
    if alive:
        await ec2.terminate_instances(InstanceIds=[i["InstanceId"] for i in alive])
    actions += [Action("instance", tag_value(i, "Name") or "", "terminated", i["InstanceId"]) for i in alive]
    sqs = await aws.sqs()
    for name in (settings.req_queue, settings.resp_queue, settings.dlq):
        url = await queue_url(sqs, name)
        if url is not None:
            await sqs.delete_queue(QueueUrl=url)
        actions.append(Action("queue", name, "deleted" if url else "absent"))
    # The web processes' own reply queues (each deletes its own at a clean stop; these are what is left).
    for name, url in sorted((await reply_queue_urls(aws, settings)).items()):
        await _delete_queue_if_there(sqs, url)
        actions.append(Action("queue", name, "deleted", "reply queue of a web process"))
    s3 = await aws.s3()
    for name in (settings.in_bucket, settings.out_bucket, settings.gallery_bucket):
        if not await bucket_exists(s3, name):
            actions.append(Action("bucket", name, "absent"))
            continue
        if name == settings.gallery_bucket:
            state = await _empty_bucket(s3, name, DEPLOYMENT_PREFIX)
            if state:
                detail = f"{state} objects: web processes' membership and leases"
                actions.append(Action("state", f"s3://{name}/{DEPLOYMENT_PREFIX}", "deleted", detail))
        removed = await _empty_bucket(s3, name)
        await s3.delete_bucket(Bucket=name)
        actions.append(Action("bucket", name, "deleted", f"{removed} objects"))
    actions += await delete_roles(aws, settings)
    for action in actions:
        log.info("torn_down", extra={"kind": action.kind, "resource": action.name, "outcome": action.outcome})
    return actions


async def _delete_queue_if_there(sqs: SQSClient, url: str) -> None:
    try:
        await sqs.delete_queue(QueueUrl=url)
    except ClientError as exc:
        if not is_missing_queue(exc):  # deleted meanwhile by its web process: the same outcome
            raise


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


async def _web_processes_status(aws: AwsClients, settings: Settings) -> list[Action]:
    """The web processes from their heartbeats (live or stale), the leases, and each per-process reply queue
    with its age and whether a live member reads it (an orphan is reaped by the next web process that starts,
    or by a live one's sweep)."""
    actions: list[Action] = []
    now = time.time()
    stale_after = settings.web_stale_s
    members: list[WebMember] = []
    if await bucket_exists(await aws.s3(), settings.gallery_bucket):
        coordination = S3Coordination(aws, settings.gallery_bucket)
        members = await coordination.members()
        for member in members:
            age = now - member.heartbeat_at
            outcome = "live" if member.live_at(now, stale_after) else "stale"
            detail = (
                f"{member.address or '?'}, pid {member.pid}, {member.in_flight} in flight, reads {member.reply_queue}, "
                f"heartbeat {_age(age)} ago"
            )
            actions.append(Action("web", member.web_id, outcome, detail))
        for lease in await coordination.leases():
            if lease.live_at(now):
                detail = f"by web {lease.holder}, token {lease.token}, expires in {_age(lease.expires_at - now)}"
                actions.append(Action("lease", lease.name, "held", detail))
            else:
                actions.append(Action("lease", lease.name, "free", f"last held by web {lease.holder}"))
    live_readers = {m.reply_queue: m for m in members if m.live_at(now, stale_after)}
    sqs = await aws.sqs()
    for name, url in sorted((await reply_queue_urls(aws, settings)).items()):
        wanted: list[QueueAttributeNameType] = ["CreatedTimestamp", "ApproximateNumberOfMessages"]
        try:
            found = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=wanted))["Attributes"]
        except ClientError as exc:
            if is_missing_queue(exc):
                continue  # deleted since the listing
            raise
        created = float(found.get("CreatedTimestamp", now))
        owner = live_readers.get(name)
        whose = f"reply queue of live web {owner.web_id}" if owner else "orphan: no live web process reads it"
        detail = f"{whose}, created {_age(now - created)} ago, {found.get('ApproximateNumberOfMessages', '?')} visible"
        actions.append(Action("queue", name, "exists", detail))
    return actions


async def _empty_bucket(s3: S3Client, name: str, prefix: str = "") -> int:
    removed = 0
    kwargs: dict[str, Any] = {"Bucket": name, "MaxKeys": 1000, "Prefix": prefix}
    while True:
        page = await s3.list_objects_v2(**kwargs)
        keys: list[ObjectIdentifierTypeDef] = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            await s3.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
            removed += len(keys)
        if not page.get("IsTruncated"):
            return removed
        kwargs["ContinuationToken"] = page["NextContinuationToken"]


async def status(aws: AwsClients, settings: Settings) -> list[Action]:
    """What exists now: buckets with object counts, queues with message counts, app-tier instances."""
    actions: list[Action] = []
    s3 = await aws.s3()
    for name in (settings.in_bucket, settings.out_bucket, settings.gallery_bucket):
        if not await bucket_exists(s3, name):
            actions.append(Action("bucket", name, "absent"))
            continue
        page = await s3.list_objects_v2(Bucket=name, MaxKeys=1000)
        count = f"{page.get('KeyCount', 0)}{'+' if page.get('IsTruncated') else ''} objects"
        if name in (settings.in_bucket, settings.out_bucket):
            days = await bucket_expiry_days(s3, name)
            count += f", objects expire after {days} days" if days else ", no expiry rule"
        actions.append(Action("bucket", name, "exists", count))
    sqs = await aws.sqs()
    for name in (settings.req_queue, settings.resp_queue, settings.dlq):
        url = await queue_url(sqs, name)
        if url is None:
            actions.append(Action("queue", name, "absent"))
            continue
        wanted: list[QueueAttributeNameType] = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        found = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=wanted))["Attributes"]
        detail = f"{found.get(wanted[0], '?')} visible, {found.get(wanted[1], '?')} in flight"
        actions.append(Action("queue", name, "exists", detail))
    actions += await _web_processes_status(aws, settings)
    actions += await roles_status(aws, settings)
    instances = await describe_fleet(await aws.ec2(), settings.prefix)
    for instance in sorted(instances, key=lambda i: name_number(tag_value(i, "Name") or "") or 0):
        name = tag_value(instance, "Name") or ""
        # Not in the pool yet: `provision` adds it once it has stopped itself after its first boot.
        detail = instance["InstanceId"] + (", first boot: not in the pool yet" if in_first_boot(instance) else "")
        actions.append(Action("instance", name, instance["State"]["Name"], detail))
    return actions
