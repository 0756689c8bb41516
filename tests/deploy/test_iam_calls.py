"""IAM proven, not hoped: every AWS call the web tier and a worker made in the deploy rehearsal (a request,
enrollments, a delete, scale-out, Ctrl-C's scale-to-zero) is allowed by the shipped policy of its role, each
statement is needed by some call, and each action granted is used (or listed below with the path that needs it).

The calls come from `FACEREC_AWS_CALL_LOG` (a botocore `provide-client-params` hook in the AwsClients of both
processes); the policies are judged by tests/iam_eval.py. moto enforces none of this, so only this test can.
"""

from __future__ import annotations

from typing import Any

import pytest

from facerec.provision import POLICIES, render_policy
from facerec.settings import Settings
from facerec.testing import MOTO_REGION
from tests.aws_rehearsal import Rehearsal
from tests.iam_eval import Request, allows, requests_of, statement_matches

# The first test here runs the rehearsal (about 20 s idle; much longer on a loaded machine).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ACCOUNT = "123456789012"  # moto's default account
ROLES = ("web", "worker")
# Granted, needed, and not reached by the rehearsal: the path that needs each.
NOT_EXERCISED = {
    ("worker", "TakeRequests", "sqs:ChangeMessageVisibility"): "a batch held past half the visibility timeout, "
    "or released on a stop",
    ("web", "StoreInputs", "s3:DeleteObject"): "an input stored for a request the queue then refused",
    ("web", "AnswerDeadLettersOfOtherWebProcesses", "sqs:SendMessage"): "a dead letter of one web process "
    "received by another, answered on the owner's queue (tests/web/test_reply_routing.py, on the memory tier)",
}
NOT_EXERCISED_STATEMENTS = {"AnswerDeadLettersOfOtherWebProcesses"}
"""Statements whose every action is in NOT_EXERCISED: no call of the rehearsal can need them."""


def pool_statements(role: str) -> list[str]:
    """The statement ids of a role's pool-mode policy (run-mode statements are rendered only for run mode)."""
    document = render_policy(role, Settings(backend="aws"), ACCOUNT)
    return [statement["Sid"] for statement in document["Statement"]]


def policy(role: str, rehearsal: Rehearsal) -> list[dict[str, Any]]:
    settings = Settings(backend="aws", prefix=rehearsal.prefix, aws_region=MOTO_REGION)
    statements: list[dict[str, Any]] = render_policy(role, settings, ACCOUNT)["Statement"]
    return statements


def requests(role: str, rehearsal: Rehearsal) -> list[Request]:
    found = [
        request
        for call in rehearsal.calls[role]
        for request in requests_of(call, region=MOTO_REGION, account=ACCOUNT, instance_tags=rehearsal.instance_tags)
    ]
    # The same authorization once.
    return list({(r.action, r.resource, tuple(sorted(r.context.items()))): r for r in found}.values())


@pytest.mark.parametrize("role", ROLES)
def test_every_call_is_allowed(role: str, aws_rehearsal: Rehearsal) -> None:
    made = requests(role, aws_rehearsal)
    assert len(made) >= 5, f"too few {role} calls recorded: {made}"
    denied = [str(r) for r in made if not allows(policy(role, aws_rehearsal), r)]
    assert not denied, f"the {role} policy refuses calls the {role} makes: {denied}"


@pytest.mark.parametrize(
    ("role", "sid"),
    [(role, sid) for role in ROLES for sid in pool_statements(role) if sid not in NOT_EXERCISED_STATEMENTS],
)
def test_each_statement_is_needed(role: str, sid: str, aws_rehearsal: Rehearsal) -> None:
    without = [s for s in policy(role, aws_rehearsal) if s["Sid"] != sid]
    denied = [r for r in requests(role, aws_rehearsal) if not allows(without, r)]
    assert denied, f"no {role} call needs statement {sid}: remove it"


@pytest.mark.parametrize("role", ROLES)
def test_every_granted_action_is_used(role: str, aws_rehearsal: Rehearsal) -> None:
    made = requests(role, aws_rehearsal)
    unused = []
    for statement in policy(role, aws_rehearsal):
        for action in statement["Action"]:
            used = any(r.action == action and statement_matches(statement, r) for r in made)
            if not used and (role, statement["Sid"], action) not in NOT_EXERCISED:
                unused.append(f"{statement['Sid']}: {action}")
    assert not unused, f"granted to the {role} role and used by no call: {unused}"


def test_the_shipped_templates_are_the_ones_judged() -> None:
    for role in ROLES:
        assert POLICIES[role].read_text().count('"Sid"') >= len(pool_statements(role))


def test_the_evaluator_denies_what_the_conditions_exclude() -> None:
    statement = {
        "Effect": "Allow",
        "Action": ["ec2:StopInstances"],
        "Resource": "arn:aws:ec2:r:1:instance/*",
        "Condition": {"StringEquals": {"aws:ResourceTag/facerec:prefix": "p"}},
    }
    ours = Request("ec2:StopInstances", "arn:aws:ec2:r:1:instance/i-1", {"aws:ResourceTag/facerec:prefix": "p"})
    theirs = Request("ec2:StopInstances", "arn:aws:ec2:r:1:instance/i-2", {"aws:ResourceTag/facerec:prefix": "q"})
    untagged = Request("ec2:StopInstances", "arn:aws:ec2:r:1:instance/i-3")
    assert allows([statement], ours)
    assert not allows([statement], theirs) and not allows([statement], untagged)
    assert not allows([statement], Request("ec2:StartInstances", ours.resource, ours.context))
    assert not allows([{**statement, "Condition": {}}, {**statement, "Effect": "Deny", "Condition": {}}], ours)
    bucket = {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/embeddings/*"}
    assert allows([bucket], Request("s3:getobject", "arn:aws:s3:::b/embeddings/x/y"))
    assert not allows([bucket], Request("s3:GetObject", "arn:aws:s3:::b/photos/x"))
    assert not allows([bucket], Request("s3:GetObject", "arn:aws:s3:::bb/embeddings/x"))
