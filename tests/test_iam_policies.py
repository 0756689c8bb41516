"""The IAM policies (package data, deploy/iam): parse once rendered, least privilege, only this deployment's
resources."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from facerec.adapters.ec2_fleet import FIRST_BOOT_TAG
from facerec.cli import main
from facerec.provision import POLICIES, render_policy
from facerec.settings import Settings
from tests.iam_eval import Request, allows

ACCOUNT = "123456789012"
REGION = "eu-central-1"
PREFIX = "cse546-demo"

# The only actions each role may have; anything else is a privilege nobody asked for.
WEB_ACTIONS = {
    "s3:GetObject",
    "s3:DeleteObject",
    "s3:PutObject",
    "s3:ListBucket",
    "sqs:SendMessage",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "sqs:CreateQueue",
    "sqs:DeleteQueue",
    "sqs:ListQueues",
    "ec2:DescribeInstances",
    "ec2:StartInstances",
    "ec2:StopInstances",
}
RUN_MODE_ACTIONS = {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags", "iam:PassRole"}
WORKER_ACTIONS = {
    "s3:DeleteObject",
    "s3:GetObject",
    "s3:PutObject",
    "s3:ListBucket",
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
    "sqs:GetQueueUrl",
    "sqs:SendMessage",
}
# ARN patterns AWS itself forces to be wide; each is allowed only under a condition (checked below).
CONDITIONED_WILDCARDS = {
    f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/*",
    f"arn:aws:ec2:{REGION}:{ACCOUNT}:volume/*",
    f"arn:aws:ec2:{REGION}:{ACCOUNT}:launch-template/*",
    f"arn:aws:ec2:{REGION}:{ACCOUNT}:network-interface/*",
    f"arn:aws:ec2:{REGION}:{ACCOUNT}:security-group/*",
    f"arn:aws:ec2:{REGION}:{ACCOUNT}:subnet/*",
    f"arn:aws:ec2:{REGION}::image/*",
}


REPLY_ID = "?" * 12
"""IAM cannot say `[0-9a-f]{12}`: twelve `?` is the closest (`*` would also match `<prefix>-resp-queue`'s
neighbours of other deployments, such as `<prefix>-resp-x-req-queue` of prefix `<prefix>-resp-x`)."""


def settings(**overrides: Any) -> Settings:
    return Settings(backend="aws", prefix=PREFIX, aws_region=REGION, **overrides)


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def statements(document: dict[str, Any]) -> list[dict[str, Any]]:
    assert document["Version"] == "2012-10-17"
    return document["Statement"]


def actions(document: dict[str, Any]) -> set[str]:
    return {action for s in statements(document) for action in as_list(s["Action"])}


def check_resources(document: dict[str, Any]) -> None:
    for statement in statements(document):
        assert statement["Effect"] == "Allow"
        assert "NotAction" not in statement and "NotResource" not in statement
        for resource in as_list(statement["Resource"]):
            if resource == "*":
                # Only calls AWS cannot scope to resources: Describe, and the web's listing of orphan reply queues.
                assert as_list(statement["Action"]) in (["ec2:DescribeInstances"], ["sqs:ListQueues"]), statement
            elif resource in CONDITIONED_WILDCARDS:
                assert statement.get("Condition"), statement
            else:
                in_scope = resource
                for bucket in ("in", "out", "gallery"):
                    in_scope = in_scope.replace(f"{PREFIX}-{bucket}-bucket/*", "")
                in_scope = in_scope.replace(f"{PREFIX}-gallery-bucket/embeddings/*", "")
                in_scope = in_scope.replace(f"{PREFIX}-gallery-bucket/_deployment/*", "")
                assert "*" not in in_scope, resource
                # `?` only in the per-process reply queues' pattern: exactly a web id's 12 characters.
                assert "?" not in in_scope or in_scope.endswith(f":{PREFIX}-resp-{REPLY_ID}"), resource
                assert PREFIX in resource, resource
                assert resource.startswith(("arn:aws:s3:::", f"arn:aws:sqs:{REGION}:{ACCOUNT}:", "arn:aws:iam::"))


@pytest.mark.parametrize("role", ["web", "worker"])
@pytest.mark.parametrize("mode", ["pool", "run"])
def test_rendered_policies_parse_and_stay_in_scope(role: str, mode: str) -> None:
    document = render_policy(role, settings(fleet_mode=mode, gallery="blob:gallery.pt"), ACCOUNT)
    assert "${" not in json.dumps(document)
    assert not any("*" in action for action in actions(document))
    check_resources(document)


def test_web_policy_actions() -> None:
    assert actions(render_policy("web", settings(), ACCOUNT)) == WEB_ACTIONS
    assert actions(render_policy("web", settings(fleet_mode="run"), ACCOUNT)) == WEB_ACTIONS | RUN_MODE_ACTIONS


def test_web_policy_touches_only_tagged_app_tier_instances() -> None:
    instance_actions = {"ec2:StartInstances", "ec2:StopInstances", "ec2:TerminateInstances"}
    document = render_policy("web", settings(fleet_mode="run"), ACCOUNT)
    on_instances = [s for s in statements(document) if set(as_list(s["Action"])) & instance_actions]
    # Every instance action is granted, and only behind the prefix and name tag conditions.
    assert set().union(*(as_list(s["Action"]) for s in on_instances)) >= instance_actions
    for statement in on_instances:
        condition = statement["Condition"]
        assert condition["StringEquals"] == {"aws:ResourceTag/facerec:prefix": PREFIX}
        assert condition["StringLike"] == {"aws:ResourceTag/Name": "app-tier-instance-*"}
    # Not one in its first boot (FIRST_BOOT_TAG), even for a web process of an older facerec that does not know
    # the tag: stopped mid-boot, it would never get a worker.
    instance = f"arn:aws:ec2:{settings().aws_region}:{ACCOUNT}:instance/i-0123456789abcdef0"
    tags = {"aws:ResourceTag/facerec:prefix": PREFIX, "aws:ResourceTag/Name": "app-tier-instance-3"}
    booting = {**tags, f"aws:ResourceTag/{FIRST_BOOT_TAG}": "1"}
    for action in ("ec2:StartInstances", "ec2:StopInstances"):
        assert allows(statements(document), Request(action, instance, tags))
        assert not allows(statements(document), Request(action, instance, booting))
    launches = [
        s
        for s in statements(document)
        if "ec2:RunInstances" in as_list(s["Action"]) and any(r.endswith(":instance/*") for r in as_list(s["Resource"]))
    ]
    # Run mode can launch instances, and only ones tagged with this deployment's prefix.
    assert launches
    for statement in launches:
        assert statement["Condition"]["StringEquals"] == {"aws:RequestTag/facerec:prefix": PREFIX}


def test_worker_policy_splits_reads_and_writes() -> None:
    document = render_policy("worker", settings(gallery="blob:galleries/casia.pt"), ACCOUNT)
    assert actions(document) == WORKER_ACTIONS
    grants = {(a, r) for s in statements(document) for a in as_list(s["Action"]) for r in as_list(s["Resource"])}
    assert ("s3:GetObject", f"arn:aws:s3:::{PREFIX}-in-bucket/*") in grants
    assert ("s3:PutObject", f"arn:aws:s3:::{PREFIX}-out-bucket/*") in grants
    assert ("s3:GetObject", f"arn:aws:s3:::{PREFIX}-gallery-bucket/*") in grants
    assert ("s3:PutObject", f"arn:aws:s3:::{PREFIX}-gallery-bucket/*") in grants
    assert ("s3:ListBucket", f"arn:aws:s3:::{PREFIX}-gallery-bucket") in grants
    assert ("s3:GetObject", f"arn:aws:s3:::{PREFIX}-out-bucket/*") not in grants
    assert ("s3:PutObject", f"arn:aws:s3:::{PREFIX}-in-bucket/*") not in grants
    assert ("sqs:SendMessage", f"arn:aws:sqs:{REGION}:{ACCOUNT}:{PREFIX}-resp-queue") in grants
    assert ("sqs:SendMessage", f"arn:aws:sqs:{REGION}:{ACCOUNT}:{PREFIX}-req-queue") not in grants
    # The per-process reply queues only to answer on: found by name and sent to, never read or made.
    assert {a for a, r in grants if r.endswith(f"-resp-{REPLY_ID}")} == {"sqs:GetQueueUrl", "sqs:SendMessage"}
    # The DLQ only to find it (the data tier opens all three queues), never to read or write messages.
    assert {a for a, r in grants if "dlq" in r} == {"sqs:GetQueueUrl", "sqs:GetQueueAttributes"}


def test_reply_queue_grants_cover_this_deployments_reply_queues_only() -> None:
    """A web process makes, reads and deletes its own reply queue and answers others' dead letters on theirs; a
    worker answers on any of them. Nothing reaches another deployment's queues, or the fixed ones beyond today."""
    deployment = settings()
    arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:{{}}".format
    ours = [arn(deployment.reply_queue(web_id)) for web_id in ("0123456789ab", "ffffffffffff")]
    foreign = [arn(f"other-resp-{'a' * 12}"), arn(f"{PREFIX}x-resp-{'a' * 12}"), arn(f"{PREFIX}-resp-{'a' * 13}")]
    fixed = [arn(deployment.req_queue), arn(deployment.resp_queue), arn(deployment.dlq)]
    web = statements(render_policy("web", deployment, ACCOUNT))
    worker = statements(render_policy("worker", deployment, ACCOUNT))
    for action in ("sqs:CreateQueue", "sqs:DeleteQueue", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:SendMessage"):
        assert all(allows(web, Request(action, queue)) for queue in ours), action
        assert not any(allows(web, Request(action, queue)) for queue in foreign), action
    for action in ("sqs:CreateQueue", "sqs:DeleteQueue"):  # never the fixed queues
        assert not any(allows(web, Request(action, queue)) for queue in fixed), action
    assert not allows(web, Request("sqs:SendMessage", arn(deployment.dlq)))
    for action in ("sqs:GetQueueUrl", "sqs:SendMessage"):
        assert all(allows(worker, Request(action, queue)) for queue in ours), action
        assert not any(allows(worker, Request(action, queue)) for queue in foreign), action
    for action in ("sqs:CreateQueue", "sqs:DeleteQueue", "sqs:ReceiveMessage", "sqs:DeleteMessage"):
        assert not any(allows(worker, Request(action, queue)) for queue in ours), action


def test_web_reads_and_writes_only_deployment_state_besides_the_gallery() -> None:
    web = statements(render_policy("web", settings(), ACCOUNT))
    state = f"arn:aws:s3:::{PREFIX}-gallery-bucket/_deployment/leases/scaler.json"
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert allows(web, Request(action, state)), action
    # Still no reading of anything else: photos, records or API keys.
    for key in ("photos/ada/1.jpg", "embeddings/ada/1.json", "api-keys/abc.json", "_deploymentx/y"):
        assert not allows(web, Request("s3:GetObject", f"arn:aws:s3:::{PREFIX}-gallery-bucket/{key}")), key
    assert not allows(web, Request("s3:GetObject", f"arn:aws:s3:::{PREFIX}-in-bucket/_deployment/x"))


def deletes(role: str) -> set[str]:
    document = render_policy(role, settings(), ACCOUNT)
    return {
        r for s in statements(document) if "s3:DeleteObject" in as_list(s["Action"]) for r in as_list(s["Resource"])
    }


def test_deletes_only_inputs_and_in_the_gallery() -> None:
    # The web tier deletes an input whose request the queue refused, and people's photos and records.
    assert deletes("web") == {
        f"arn:aws:s3:::{PREFIX}-in-bucket/*",
        f"arn:aws:s3:::{PREFIX}-gallery-bucket/*",
        f"arn:aws:s3:::{PREFIX}-gallery-bucket/_deployment/*",  # a member that left (its own, or reaped)
    }
    # A worker only withdraws embedding records it wrote for a person deleted meanwhile: never photos.
    assert deletes("worker") == {f"arn:aws:s3:::{PREFIX}-gallery-bucket/embeddings/*"}


def test_templates_are_json_with_placeholders() -> None:
    for path in POLICIES.values():
        text = path.read_text()
        json.loads(text)
        assert "${prefix}" in text and "${account}" in text


def test_account_is_validated() -> None:
    with pytest.raises(ValueError, match="account"):
        render_policy("web", settings(), "12345")


def test_policy_command_prints_the_document() -> None:
    result = CliRunner().invoke(
        main, ["aws", "policy", "worker", "--account", ACCOUNT, "--prefix", PREFIX, "--region", REGION]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == render_policy("worker", settings(), ACCOUNT)
