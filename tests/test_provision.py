"""`facerec aws provision|teardown|status` against moto's server: idempotent, complete, reversible."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner
from PIL import Image

from facerec.adapters.aws_session import AwsClients
from facerec.adapters.ec2_fleet import FIRST_BOOT_TAG, Ec2Fleet
from facerec.cli import main
from facerec.provision import USER_DATA, render_template, render_user_data, worker_environment
from facerec.settings import Settings
from tests.aws import API_STOP, first_boots
from tests.aws import image_id as aws_image_id

REGION = "us-east-1"
PREFIX = "prov-test"


def client(service: str, endpoint: str) -> Any:
    return boto3.client(service, region_name=REGION, endpoint_url=endpoint)


def cli(endpoint: str, *args: str) -> str:
    with first_boots(endpoint, PREFIX):
        result = CliRunner().invoke(
            main, ["aws", args[0], "--prefix", PREFIX, "--region", REGION, "--endpoint-url", endpoint, *args[1:]]
        )
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def image_id(endpoint: str) -> str:
    return aws_image_id(client("ec2", endpoint))


def app_tier(endpoint: str) -> dict[str, tuple[str, str]]:
    """Name -> (id, state) of this prefix's non-terminated app-tier instances."""
    reply = client("ec2", endpoint).describe_instances(Filters=[{"Name": "tag:facerec:prefix", "Values": [PREFIX]}])
    found = {}
    for instance in (i for r in reply["Reservations"] for i in r["Instances"]):
        if instance["State"]["Name"] != "terminated":
            name = next(t["Value"] for t in instance["Tags"] if t["Key"] == "Name")
            found[name] = (instance["InstanceId"], instance["State"]["Name"])
    return found


def test_provision_creates_everything_once(endpoint: str) -> None:
    first = cli(endpoint, "provision", "--pool", "3", "--ami", image_id(endpoint))
    assert first.count("created") == 3 + 2 + 3 + 3, first  # buckets, expiry rules, queues, instances
    sqs = client("sqs", endpoint)
    req_url = sqs.get_queue_url(QueueName=f"{PREFIX}-req-queue")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=req_url, AttributeNames=["All"])["Attributes"]
    assert attributes["MaximumMessageSize"] == "1024"
    assert attributes["VisibilityTimeout"] == "30"
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(f":{PREFIX}-req-dlq")
    assert int(redrive["maxReceiveCount"]) == 3
    sqs.get_queue_url(QueueName=f"{PREFIX}-resp-queue")
    buckets = {b["Name"] for b in client("s3", endpoint).list_buckets()["Buckets"]}
    assert {f"{PREFIX}-in-bucket", f"{PREFIX}-out-bucket", f"{PREFIX}-gallery-bucket"} <= buckets
    pool = app_tier(endpoint)
    assert sorted(pool) == [f"app-tier-instance-{n}" for n in (1, 2, 3)]
    # Each stopped itself at the end of its first boot (user data), which provision waited for; then they joined
    # the pool (the first-boot tag the fleet skips is gone).
    assert {state for _, state in pool.values()} == {"stopped"}
    assert first.count("stopped after its first boot") == 3, first
    tags = client("ec2", endpoint).describe_tags(Filters=[{"Name": "key", "Values": [FIRST_BOOT_TAG]}])["Tags"]
    assert tags == []
    user_data = client("ec2", endpoint).describe_instance_attribute(
        InstanceId=pool["app-tier-instance-1"][0], Attribute="userData"
    )
    script = base64.b64decode(user_data["UserData"]["Value"]).decode()
    assert f'FACEREC_PREFIX="{PREFIX}"' in script and "stop_when_done='yes'" in script

    second = cli(endpoint, "provision", "--pool", "3", "--ami", image_id(endpoint))
    assert "created" not in second and "updated" not in second
    assert second.count("exists") == 11
    assert app_tier(endpoint) == pool
    # Growing the pool adds only the missing instance.
    third = cli(endpoint, "provision", "--pool", "4", "--ami", image_id(endpoint))
    assert third.count("created") == 1 and "app-tier-instance-4" in third


def test_provision_brings_queue_attributes_to_the_settings(endpoint: str) -> None:
    cli(endpoint, "provision")
    sqs = client("sqs", endpoint)
    req_url = sqs.get_queue_url(QueueName=f"{PREFIX}-req-queue")["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=req_url, Attributes={"VisibilityTimeout": "5"})
    output = cli(endpoint, "provision")
    assert "updated" in output and "VisibilityTimeout" in output
    attributes = sqs.get_queue_attributes(QueueUrl=req_url, AttributeNames=["VisibilityTimeout"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "30"


def test_status_and_teardown(endpoint: str) -> None:
    provisioned = cli(endpoint, "provision", "--pool", "2", "--ami", image_id(endpoint))
    # The web processes make their own reply queues: provision makes none.
    assert "-resp-queue" in provisioned and not re.search(rf"{PREFIX}-resp-[0-9a-f]{{12}}", provisioned)
    client("s3", endpoint).put_object(Bucket=f"{PREFIX}-in-bucket", Key="test_00.jpg", Body=b"x")
    live, dead = web_processes(endpoint)
    status = cli(endpoint, "status")
    assert f"{PREFIX}-in-bucket  (1 objects, objects expire after 30 days)" in status
    assert f"{PREFIX}-gallery-bucket  (3 objects)" in status  # the gallery is kept (here: the web processes' state)
    assert "app-tier-instance-2" in status
    # Each web process from its heartbeat, the leases, each reply queue with its age and owner.
    assert re.search(rf"live +web +{live} +\(10.0.0.7:8000, pid 99, 2 in flight, reads {PREFIX}-resp-{live}", status)
    assert re.search(rf"stale +web +{dead} ", status)
    assert re.search(rf"held +lease +scaler +\(by web {live}, token 4, expires in", status)
    assert re.search(rf"{PREFIX}-resp-{live} +\(reply queue of live web {live}, created [0-9.]+ s ago", status)
    assert re.search(rf"{PREFIX}-resp-{dead} +\(orphan: no live web process reads it", status)
    assert f"{live}-not-ours" not in status

    refused = CliRunner().invoke(main, ["aws", "teardown", "--prefix", PREFIX, "--endpoint-url", endpoint])
    assert refused.exit_code == 1 and "--yes" in refused.output
    assert len(app_tier(endpoint)) == 2

    removed = cli(endpoint, "teardown", "--yes")
    for web_id in (live, dead):
        assert re.search(rf"deleted +queue +{PREFIX}-resp-{web_id} ", removed)
    assert re.search(rf"deleted +state +s3://{PREFIX}-gallery-bucket/_deployment/ +\(3 objects", removed)
    assert removed.count("deleted") == 6 + 3 and removed.count("terminated") == 2
    assert removed.count("absent") == 4  # no roles or profiles: provision ran without --create-roles
    assert {state for _, state in app_tier(endpoint).values()} <= {"shutting-down"}
    assert not [b for b in client("s3", endpoint).list_buckets()["Buckets"] if b["Name"].startswith(PREFIX)]
    left = [url.rsplit("/", 1)[-1] for url in client("sqs", endpoint).list_queues(QueueNamePrefix=PREFIX)["QueueUrls"]]
    assert left == [f"{PREFIX}-resp-{live}-not-ours"]  # another deployment's (prefix `<PREFIX>-resp-<live>-not`)
    again = cli(endpoint, "teardown", "--yes")
    assert again.count("absent") == 6 + 4 and "deleted" not in again


def web_processes(endpoint: str) -> tuple[str, str]:
    """Two web processes' reply queues and heartbeats (one live, one silent for an hour) and a scaler lease, as
    `facerec serve` writes them; and a queue of another deployment that shares the name prefix."""
    sqs, s3 = client("sqs", endpoint), client("s3", endpoint)
    live, dead = "0123456789ab", "ba9876543210"
    for web_id in (live, dead):
        sqs.create_queue(QueueName=f"{PREFIX}-resp-{web_id}")
    sqs.create_queue(QueueName=f"{PREFIX}-resp-{live}-not-ours")
    now = time.time()
    bucket = f"{PREFIX}-gallery-bucket"
    for web_id, heartbeat_at in ((live, now), (dead, now - 3600)):
        member = {
            "web_id": web_id,
            "reply_queue": f"{PREFIX}-resp-{web_id}",
            "in_flight": 2,
            "heartbeat_at": heartbeat_at,
            "address": "10.0.0.7:8000",
            "pid": 99,
        }
        s3.put_object(Bucket=bucket, Key=f"_deployment/members/{web_id}.json", Body=json.dumps(member))
    lease = {"name": "scaler", "holder": live, "expires_at": now + 60, "token": 4, "nonce": "n", "written_at": now}
    s3.put_object(Bucket=bucket, Key="_deployment/leases/scaler.json", Body=json.dumps(lease))
    return live, dead


def test_pool_needs_an_ami(endpoint: str) -> None:
    result = CliRunner().invoke(main, ["aws", "provision", "--pool", "2", "--endpoint-url", endpoint])
    assert result.exit_code == 2 and "--ami" in result.output


def test_user_data_carries_settings_not_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    settings = Settings(backend="aws", prefix="abc", gallery="blob:gallery/casia.pt", aws_region="eu-west-1")
    script = render_user_data(settings)
    assert script.startswith("#!/bin/bash")
    assert 'FACEREC_PREFIX="abc"' in script
    assert 'FACEREC_AWS_REGION="eu-west-1"' in script
    assert 'FACEREC_GALLERY="blob:gallery/casia.pt"' in script
    assert "do-not-leak" not in script and "SECRET" not in script
    assert "${environment}" in USER_DATA.read_text()
    assert not re.search(r"\$\{[a-z_]+\}", script), "a template placeholder was left"


def test_a_local_gallery_file_is_not_passed_to_the_instances(tmp_path: Path) -> None:
    # The instances load the copy `facerec serve --gallery FILE --backend aws` uploads to the gallery bucket.
    assert "FACEREC_GALLERY" not in worker_environment(Settings(gallery=str(tmp_path / "gallery.pt")))


def test_worker_environment_rejects_values_that_break_the_file() -> None:
    with pytest.raises(ValueError, match="gallery"):
        worker_environment(Settings(gallery="blob:a\nFACEREC_PREFIX=evil"))


def test_render_template_leaves_foreign_variables(tmp_path: Path) -> None:
    assert render_template("${prefix}-x ${aws:username} $HOME", {"prefix": "p"}) == "p-x ${aws:username} $HOME"
    with pytest.raises(KeyError):
        render_template("${unknown}", {})


def _photos(folder: Path, people: int, each: int) -> Path:
    """Photo n of person p is (16 + p) x (16 + n) pixels, so the archive's order can be read back."""
    for person in range(people):
        (folder / f"Person_{person}").mkdir(parents=True)
        for number in range(each):
            photo = folder / f"Person_{person}" / f"Person_{person}_{number:02d}.jpg"
            Image.new("RGB", (16 + person, 16 + number), (200, 150, 100)).save(photo)
    return folder


def test_calibration_photos_reach_the_instances_by_a_presigned_download(endpoint: str, tmp_path: Path) -> None:
    import httpx

    photos = _photos(tmp_path / "photos", people=10, each=25)  # more than are sent
    (photos / "Person_0" / "Person_0_00.jpg").write_bytes(b"not a photo")  # skipped
    Image.new("RGB", (3000, 2000)).save(photos / "Person_1" / "Person_1_00.jpg")  # a large one: sent smaller
    output = cli(endpoint, "provision", "--pool", "1", "--ami", image_id(endpoint), "--calibration-dir", str(photos))
    key = f"{PREFIX}-gallery-bucket/deploy/calibration-photos.zip"
    assert re.search(rf"uploaded\s+photos\s+s3://{key}\s+\(192, to calibrate the int8 model on\)", output), output
    ((instance_id, _),) = app_tier(endpoint).values()
    user_data = client("ec2", endpoint).describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    script = base64.b64decode(user_data["UserData"]["Value"]).decode()
    url = re.search(r"^calibration_url='(.+)'$", script, re.MULTILINE)
    assert url and "calibration-photos.zip" in url.group(1) and "Signature" in url.group(1)
    # What an instance without AWS credentials downloads: the photos, spread over the people, under plain names.
    download = httpx.get(url.group(1))
    assert download.status_code == 200
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        names = archive.namelist()
        assert len(names) == 192 and names[:3] == ["0000.jpg", "0001.jpg", "0002.jpg"]
        sizes = [Image.open(io.BytesIO(archive.read(name))).size for name in names[:11]]
    # Person 0's first photo is no photo (skipped); person 1's is the large one, sent at 1280x853.
    assert sizes == [(1280, 853), *((16 + p, 16) for p in range(2, 10)), (16, 17), (17, 17)]


def test_too_few_calibration_photos_are_refused_before_anything_is_made(endpoint: str, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos", people=3, each=5)
    arguments = ["--prefix", PREFIX, "--region", REGION, "--endpoint-url", endpoint]
    pool = ["--pool", "1", "--ami", image_id(endpoint)]
    result = CliRunner().invoke(main, ["aws", "provision", *arguments, *pool, "--calibration-dir", str(photos)])
    assert result.exit_code == 2 and "has 15 photos" in result.output and "at least 16" in result.output
    assert not client("s3", endpoint).list_buckets()["Buckets"]
    # Without a pool there are no instances to calibrate: said, not ignored.
    result = CliRunner().invoke(main, ["aws", "provision", *arguments, "--calibration-dir", str(photos)])
    assert result.exit_code == 2 and "add --pool" in result.output


def test_an_instance_that_never_finishes_its_first_boot_is_reported_not_stopped(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping it would leave it without a worker for good (cloud-init runs user data once): it is left running
    and named, and the command fails."""
    from facerec import provision

    monkeypatch.setattr(provision, "FIRST_BOOT_LIMIT_S", 1.5)
    arguments = ["--prefix", PREFIX, "--region", REGION, "--endpoint-url", endpoint]
    result = CliRunner().invoke(main, ["aws", "provision", *arguments, "--pool", "1", "--ami", image_id(endpoint)])
    assert result.exit_code == 1, result.output
    ((instance_id, state),) = app_tier(endpoint).values()
    assert state == "running"
    assert f"{instance_id}, still running after 1.5 s: its first boot is slow or failed" in result.output
    assert f"aws ec2 get-console-output --instance-id {instance_id}" in result.output
    assert f"{instance_id}, first boot: not in the pool yet" in cli(endpoint, "status")
    # Meanwhile a web tier's scaler leaves it alone: it is not in the pool yet.
    assert asyncio.run(_pool_seen_by_the_fleet(endpoint)) == []
    # Its boot ends later (it stops itself); provision again sees that and adds it to the pool.
    client("ec2", endpoint).stop_instances(InstanceIds=[instance_id])
    again = cli(endpoint, "provision", "--pool", "1", "--ami", image_id(endpoint))
    assert re.search(rf"exists\s+instance\s+app-tier-instance-1\s+\({instance_id}, stopped after its first boot", again)
    assert asyncio.run(_pool_seen_by_the_fleet(endpoint)) == [instance_id]


async def _pool_seen_by_the_fleet(endpoint: str) -> list[str]:
    settings = Settings(backend="aws", prefix=PREFIX, aws_region=REGION, aws_endpoint_url=endpoint)
    async with AwsClients(settings) as aws:
        return [worker.worker_id for worker in await Ec2Fleet(aws, settings, max_workers=5).list()]


def test_user_data_of_a_template_that_does_not_stop_its_instance_is_stopped_once_running(
    endpoint: str, tmp_path: Path
) -> None:
    template = tmp_path / "user-data.sh"
    template.write_text("#!/bin/bash\necho '${environment}' > /etc/facerec.env\n")
    output = cli(endpoint, "provision", "--pool", "1", "--ami", image_id(endpoint), "--user-data", str(template))
    assert "stopping" in output and "first boot" not in output
    user_data = client("ec2", endpoint).describe_instance_attribute(
        InstanceId=next(iter(app_tier(endpoint).values()))[0], Attribute="userData"
    )
    assert f'FACEREC_PREFIX="{PREFIX}"' in base64.b64decode(user_data["UserData"]["Value"]).decode()


class _BootingEC2:
    """DescribeInstances as real EC2 answers it while instances boot: at first it does not know them yet."""

    def __init__(self, states: list[dict[str, str]]) -> None:
        self.states = states
        self.calls = 0
        self.untagged: list[str] = []

    async def describe_instances(self, InstanceIds: list[str]) -> dict[str, Any]:  # boto3's argument name
        from botocore.exceptions import ClientError

        self.calls += 1
        if self.calls == 1:
            raise ClientError({"Error": {"Code": "InvalidInstanceID.NotFound"}}, "DescribeInstances")
        states = self.states[min(self.calls - 2, len(self.states) - 1)]
        instances = [_instance(i, *states[i].split("/")) for i in InstanceIds]
        return {"Reservations": [{"Instances": instances}]}

    async def delete_tags(self, Resources: list[str], Tags: list[dict[str, str]]) -> None:  # boto3's names
        assert Tags == [{"Key": FIRST_BOOT_TAG}]
        self.untagged += Resources


def _instance(instance_id: str, state: str, reason: str = "") -> dict[str, Any]:
    return {"InstanceId": instance_id, "State": {"Name": state}, "StateReason": {"Code": reason}}


async def test_waiting_for_first_boots_rides_out_eventual_consistency_and_tells_how_each_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from facerec import provision

    monkeypatch.setattr(provision, "FIRST_BOOT_POLLS_S", (0.001, 0.001))
    itself, by_api = "stopped/Client.InstanceInitiatedShutdown", "stopped/Client.UserInitiatedShutdown"
    ec2 = _BootingEC2(
        [
            {"i-1": "pending", "i-2": "pending", "i-3": "pending", "i-4": "pending"},
            {"i-1": "running", "i-2": "shutting-down", "i-3": "running", "i-4": "running"},
            {"i-1": "stopping", "i-2": "terminated", "i-3": "running", "i-4": by_api},
            {"i-1": itself, "i-3": "running"},
        ]
    )
    progress: list[str] = []
    ended = await provision.wait_for_first_boots(ec2, ["i-1", "i-2", "i-3", "i-4"], 0.5, progress.append)  # type: ignore[arg-type]
    assert {i: (end.state, end.ready) for i, end in ended.items()} == {
        "i-1": ("stopped", True),
        "i-2": ("terminated", False),
        "i-4": ("stopped", False),  # stopped through the API: its boot may have been cut short
    }  # i-3 still boots
    assert ec2.untagged == ["i-1"]  # only the one that stopped itself joins the pool
    assert progress == [
        "i-2 is terminated (1 of 4)",
        "i-4 is stopped (Client.UserInitiatedShutdown) (2 of 4)",
        "i-1 is ready (3 of 4)",
    ]


def test_an_instance_stopped_by_someone_during_its_first_boot_stays_out_of_the_pool(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped through the API (an operator, a web process of an older facerec) rather than by its user data,
    its boot may have been cut short: it is named, not taken into the pool. So is one above the size asked for
    now. (The fake EC2 above shows one that stopped itself joining.)"""
    from facerec import provision

    monkeypatch.setattr(provision, "FIRST_BOOT_LIMIT_S", 1.0)
    arguments = ["--prefix", PREFIX, "--region", REGION, "--endpoint-url", endpoint]
    result = CliRunner().invoke(main, ["aws", "provision", *arguments, "--pool", "2", "--ami", image_id(endpoint)])
    assert result.exit_code == 1, result.output  # both still booting
    ids = [instance_id for instance_id, _ in app_tier(endpoint).values()]
    client("ec2", endpoint).stop_instances(InstanceIds=ids)
    result = CliRunner().invoke(main, ["aws", "provision", *arguments, "--pool", "1", "--ami", image_id(endpoint)])
    assert result.exit_code == 1, result.output
    for number in (1, 2):
        found = re.search(rf"app-tier-instance-{number}\s+\(i-\w+, stopped by someone \({API_STOP}\)", result.output)
        assert found, result.output
    assert asyncio.run(_pool_seen_by_the_fleet(endpoint)) == []
