"""Helpers for tests against moto's server (the `moto_endpoint` / `endpoint` fixtures are in tests/conftest.py)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any
from unittest import mock

from facerec.adapters.aws_session import AwsClients
from facerec.adapters.ec2_fleet import instance_tags
from facerec.settings import Settings
from facerec.testing import MOTO_REGION

REGION = MOTO_REGION
API_STOP = "Client.UserInitiatedShutdown"
"""EC2's StateReason code after StopInstances."""
PREFIX = "fleet-test"


def moto_settings(endpoint: str, **overrides: Any) -> Settings:
    return Settings(backend="aws", aws_endpoint_url=endpoint, aws_region=REGION, **overrides)


def boto3_client(service: str, endpoint: str) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=endpoint, region_name=REGION)


def unique_name(kind: str) -> str:
    return f"ct-{kind}-{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def moto_clients(endpoint: str) -> AsyncIterator[AwsClients]:
    async with AwsClients(moto_settings(endpoint)) as aws:
        yield aws


def create_aws_resources(settings: Settings) -> None:
    """The buckets and queues `facerec aws provision` makes, for tests that need no EC2 pool."""
    assert settings.aws_endpoint_url, "only ever against moto"
    s3 = boto3_client("s3", settings.aws_endpoint_url)
    for bucket in (settings.in_bucket, settings.out_bucket, settings.gallery_bucket):
        s3.create_bucket(Bucket=bucket)
    sqs = boto3_client("sqs", settings.aws_endpoint_url)
    dlq_url = sqs.create_queue(QueueName=settings.dlq)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(settings.max_receives)})
    sqs.create_queue(
        QueueName=settings.req_queue,
        Attributes={
            "MaximumMessageSize": str(settings.message_max_bytes),
            "VisibilityTimeout": str(int(settings.visibility_timeout_s)),
            "RedrivePolicy": redrive,
        },
    )
    sqs.create_queue(QueueName=settings.resp_queue)


def image_id(ec2: Any) -> str:
    # Filtered: moto's full image list is large and slow to serialise.
    images = ec2.describe_images(Filters=[{"Name": "architecture", "Values": ["x86_64"]}], Owners=["amazon"])
    return str(images["Images"][0]["ImageId"])


def make_pool(ec2: Any, size: int, prefix: str = PREFIX) -> list[str]:
    """Stopped app-tier instances, created in reverse name order (the fleet must sort by name)."""
    ids: dict[int, str] = {}
    image = image_id(ec2)
    for number in range(size, 0, -1):
        reply = ec2.run_instances(
            ImageId=image,
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": instance_tags(f"app-tier-instance-{number}", prefix)}
            ],
        )
        ids[number] = reply["Instances"][0]["InstanceId"]
    ec2.stop_instances(InstanceIds=list(ids.values()))
    return [ids[n] for n in sorted(ids)]


@contextmanager
def first_boots(endpoint: str, prefix: str, boot_s: float = 0.3) -> Iterator[list[str]]:
    """What the pool's user data does, which moto's instances do not run: each new instance of `prefix` stops
    itself `boot_s` after it is first seen running. Yields the ids stopped so far. Moto can only stop an
    instance through the API, which EC2 records as Client.UserInitiatedShutdown, so while this runs provision
    takes that reason, too, for an instance that powered itself off."""
    from facerec import provision

    ec2 = boto3_client("ec2", endpoint)
    seen: dict[str, float] = {}
    stopped: list[str] = []
    done = threading.Event()

    def boot() -> None:
        while not done.wait(0.05):
            reply = ec2.describe_instances(
                Filters=[
                    {"Name": "tag:facerec:prefix", "Values": [prefix]},
                    {"Name": "instance-state-name", "Values": ["running"]},
                ]
            )
            for instance_id in (i["InstanceId"] for r in reply["Reservations"] for i in r["Instances"]):
                if instance_id in stopped:
                    continue
                first = seen.setdefault(instance_id, time.monotonic())
                if time.monotonic() - first >= boot_s:
                    ec2.stop_instances(InstanceIds=[instance_id])
                    stopped.append(instance_id)

    thread = threading.Thread(target=boot, name="first-boots", daemon=True)
    thread.start()
    try:
        with mock.patch.object(provision, "SELF_STOP_REASONS", provision.SELF_STOP_REASONS | {API_STOP}):
            yield stopped
    finally:
        done.set()
        thread.join(timeout=10)
