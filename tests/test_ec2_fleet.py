"""Ec2Fleet against moto's server (aioboto3 cannot be patched by `mock_aws`; a real HTTP endpoint works)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from facerec.adapters.aws_session import AwsClients
from facerec.adapters.ec2_fleet import EC2_STATES, FIRST_BOOT_TAG, Ec2Fleet, instance_tags
from facerec.ports import Fleet, PortError, WorkerState
from facerec.settings import Settings
from tests.aws import PREFIX, REGION, image_id, make_pool


def ec2_states(ec2: Any, ids: list[str]) -> list[str]:
    reply = ec2.describe_instances(InstanceIds=ids)
    by_id = {i["InstanceId"]: i["State"]["Name"] for r in reply["Reservations"] for i in r["Instances"]}
    return [by_id[i] for i in ids]


@pytest.fixture
async def aws(endpoint: str) -> AsyncIterator[AwsClients]:
    async with AwsClients(Settings(aws_endpoint_url=endpoint, aws_region=REGION)) as clients:
        yield clients


def settings(endpoint: str, **overrides: Any) -> Settings:
    return Settings(backend="aws", prefix=PREFIX, aws_endpoint_url=endpoint, aws_region=REGION, **overrides)


def test_state_mapping_covers_every_ec2_state() -> None:
    assert EC2_STATES == {
        "pending": WorkerState.PENDING,
        "running": WorkerState.RUNNING,
        "stopping": WorkerState.STOPPING,
        "shutting-down": WorkerState.STOPPING,
        "stopped": WorkerState.STOPPED,
        "terminated": WorkerState.STOPPED,
    }


async def test_pool_lists_only_this_prefix_sorted_by_name(ec2: Any, aws: AwsClients, endpoint: str) -> None:
    ids = make_pool(ec2, 3)
    make_pool(ec2, 2, prefix="someone-else")
    ec2.run_instances(ImageId=image_id(ec2), MinCount=1, MaxCount=1)  # untagged
    fleet = Ec2Fleet(aws, settings(endpoint), max_workers=15)
    assert isinstance(fleet, Fleet)
    workers = await fleet.list()
    assert [w.name for w in workers] == [f"app-tier-instance-{n}" for n in (1, 2, 3)]
    assert [w.worker_id for w in workers] == ids
    assert {w.state for w in workers} == {WorkerState.STOPPED}
    assert all(w.launched_at for w in workers)


async def test_pool_start_never_exceeds_max_and_picks_in_name_order(ec2: Any, aws: AwsClients, endpoint: str) -> None:
    ids = make_pool(ec2, 5)
    fleet = Ec2Fleet(aws, settings(endpoint), max_workers=3)
    started = await fleet.start(2)
    assert [w.worker_id for w in started] == ids[:2]
    assert {w.state for w in started} == {WorkerState.PENDING}
    assert [w.worker_id for w in await fleet.start(10)] == ids[2:3]
    assert await fleet.start(1) == []
    assert ec2_states(ec2, ids) == ["running"] * 3 + ["stopped"] * 2
    # Someone else starts one behind the fleet's back: the next start counts what EC2 says.
    await fleet.stop([ids[0]])
    ec2.start_instances(InstanceIds=[ids[4]])
    assert await fleet.start(5) == []


async def test_pool_stop_and_cache_invalidation(ec2: Any, aws: AwsClients, endpoint: str) -> None:
    ids = make_pool(ec2, 2)
    fleet = Ec2Fleet(aws, settings(endpoint), max_workers=15, cache_ttl_s=60)
    await fleet.start(2)
    assert {w.state for w in await fleet.list()} == {WorkerState.RUNNING}
    ec2.stop_instances(InstanceIds=[ids[1]])
    # Within the TTL the cached answer stands: the scaler's polls cost no API calls.
    assert {w.state for w in await fleet.list()} == {WorkerState.RUNNING}
    await fleet.stop([ids[0], "i-0123456789abcdef0"])  # an id outside the fleet is never touched
    assert {w.state for w in await fleet.list()} == {WorkerState.STOPPED}
    assert ec2_states(ec2, ids) == ["stopped", "stopped"]


async def test_pool_start_with_empty_pool(aws: AwsClients, endpoint: str) -> None:
    fleet = Ec2Fleet(aws, settings(endpoint), max_workers=15)
    assert await fleet.start(3) == []
    assert await fleet.list() == []


async def test_run_mode_runs_from_template_and_terminates(ec2: Any, aws: AwsClients, endpoint: str) -> None:
    ec2.create_launch_template(
        LaunchTemplateName="facerec-worker", LaunchTemplateData={"ImageId": image_id(ec2), "InstanceType": "t3.micro"}
    )
    fleet = Ec2Fleet(aws, settings(endpoint, fleet_mode="run", aws_launch_template="facerec-worker"), max_workers=2)
    started = await fleet.start(3)
    assert sorted(w.name for w in started) == ["app-tier-instance-1", "app-tier-instance-2"]
    workers = await fleet.list()
    assert [w.name for w in workers] == ["app-tier-instance-1", "app-tier-instance-2"]
    assert {w.state for w in workers} <= {WorkerState.PENDING, WorkerState.RUNNING}
    first = workers[0]
    await fleet.stop([first.worker_id])
    assert ec2_states(ec2, [first.worker_id]) in (["shutting-down"], ["terminated"])
    # The terminated instance frees its name (and its slot) for the next one.
    [replacement] = await fleet.start(5)
    assert replacement.name == "app-tier-instance-1"
    tags = ec2.describe_instances(InstanceIds=[replacement.worker_id])["Reservations"][0]["Instances"][0]["Tags"]
    assert {"Key": "facerec:prefix", "Value": PREFIX} in tags


async def test_instances_in_their_first_boot_are_no_workers_but_keep_their_names(
    ec2: Any, aws: AwsClients, endpoint: str
) -> None:
    """Provision tags a new pool instance until it has stopped itself after its first boot: the scaler must not
    count, start or stop it, nor give its name to another."""
    ec2.run_instances(
        ImageId=image_id(ec2),
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [*instance_tags("app-tier-instance-1", PREFIX), {"Key": FIRST_BOOT_TAG, "Value": "1"}],
            }
        ],
    )["Instances"][0]["InstanceId"]
    ec2.create_launch_template(
        LaunchTemplateName="facerec-worker", LaunchTemplateData={"ImageId": image_id(ec2), "InstanceType": "t3.micro"}
    )
    fleet = Ec2Fleet(aws, settings(endpoint, fleet_mode="run", aws_launch_template="facerec-worker"), max_workers=5)
    assert await fleet.list() == []
    started = await fleet.start(1)
    assert [w.name for w in started] == ["app-tier-instance-2"]


def test_run_mode_needs_a_launch_template(endpoint: str) -> None:
    with pytest.raises(ValueError, match="LAUNCH_TEMPLATE"):
        Ec2Fleet(AwsClients(settings(endpoint)), settings(endpoint, fleet_mode="run"), max_workers=1)


class _FailingEc2:
    async def describe_instances(self, **kwargs: Any) -> dict[str, Any]:
        raise ClientError({"Error": {"Code": "RequestLimitExceeded", "Message": "slow down"}}, "DescribeInstances")


class _FailingClients(AwsClients):
    async def ec2(self) -> Any:
        return _FailingEc2()


async def test_errors_become_port_errors(endpoint: str) -> None:
    fleet = Ec2Fleet(_FailingClients(settings(endpoint)), settings(endpoint), max_workers=1)
    with pytest.raises(PortError, match="RequestLimitExceeded"):
        await fleet.list()
    with pytest.raises(PortError):
        await fleet.start(1)


async def test_open_fleet_aws_uses_given_or_own_clients(ec2: Any, aws: AwsClients, endpoint: str) -> None:
    from facerec.fleets import open_fleet

    make_pool(ec2, 1)
    async with open_fleet(settings(endpoint), aws) as fleet:
        assert isinstance(fleet, Ec2Fleet) and fleet.max_workers == 15
        assert [w.name for w in await fleet.list()] == ["app-tier-instance-1"]
    async with open_fleet(settings(endpoint)) as fleet:
        assert [w.name for w in await fleet.list()] == ["app-tier-instance-1"]
