"""A small IAM policy evaluator for the features the shipped policies use, and the mapping from recorded AWS
calls (`FACEREC_AWS_CALL_LOG` lines) to the requests IAM authorizes.

No well-kept library evaluates identity policies with resource ARNs and conditions offline (moto's own
evaluator ignores both; policy_sentry, parliament and cloudsplaining write or lint policies), so this covers
what the policies here use: Allow and Deny, `Action` and `Resource` with `*`/`?` wildcards (actions
case-insensitively), and the condition operators StringEquals, StringLike, ArnLike, Bool and Null, each key's values
OR-ed and keys and operators AND-ed; a key missing from the request fails its condition, as in IAM. An
explicit Deny wins; no Allow means an implicit deny.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Operations whose IAM action is named differently (batch calls are authorized as their single form; a bucket
# HEAD needs ListBucket, an object HEAD GetObject).
_ACTION_OF = {
    ("s3", "HeadBucket"): "s3:ListBucket",
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("s3", "ListObjects"): "s3:ListBucket",
    ("s3", "HeadObject"): "s3:GetObject",
    ("s3", "DeleteObjects"): "s3:DeleteObject",
    ("sqs", "SendMessageBatch"): "sqs:SendMessage",
    ("sqs", "DeleteMessageBatch"): "sqs:DeleteMessage",
    ("sqs", "ChangeMessageVisibilityBatch"): "sqs:ChangeMessageVisibility",
}
_BUCKET_LEVEL = {"s3:ListBucket"}
_SUPPORTED_OPERATORS = {"StringEquals", "StringLike", "ArnLike", "Bool", "Null"}


@dataclass(frozen=True)
class Request:
    """One authorization: an action on one resource ARN with its condition context."""

    action: str
    resource: str
    context: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.action} on {self.resource}"


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _wildcard(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """IAM wildcards: `*` any run of characters (`/` included), `?` one character; nothing else is special."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE if ignore_case else 0) is not None


def _condition_holds(condition: Mapping[str, Mapping[str, Any]], context: Mapping[str, str]) -> bool:
    for operator, tests in condition.items():
        if operator not in _SUPPORTED_OPERATORS:
            raise NotImplementedError(f"condition operator {operator} (extend tests/iam_eval.py)")
        for key, expected in tests.items():
            actual = context.get(key)
            if operator == "Null":  # "true": the key must be absent; "false": present
                if (actual is None) != (str(expected).lower() == "true"):
                    return False
                continue
            if actual is None:
                return False
            values = [str(v) for v in _as_list(expected)]
            if operator == "StringEquals":
                ok = actual in values
            elif operator == "Bool":
                ok = actual.lower() in (v.lower() for v in values)
            else:  # StringLike, ArnLike: wildcards
                ok = any(_wildcard(v, actual) for v in values)
            if not ok:
                return False
    return True


def statement_matches(statement: Mapping[str, Any], request: Request) -> bool:
    for unsupported in ("NotAction", "NotResource", "Principal", "NotPrincipal"):
        if unsupported in statement:
            raise NotImplementedError(f"{unsupported} (extend tests/iam_eval.py)")
    if not any(_wildcard(a, request.action, ignore_case=True) for a in _as_list(statement["Action"])):
        return False
    if not any(_wildcard(r, request.resource) for r in _as_list(statement["Resource"])):
        return False
    return _condition_holds(statement.get("Condition", {}), request.context)


def allows(statements: Iterable[Mapping[str, Any]], request: Request) -> bool:
    matching = [s for s in statements if statement_matches(s, request)]
    if any(s["Effect"] == "Deny" for s in matching):
        return False
    return any(s["Effect"] == "Allow" for s in matching)


def requests_of(
    call: Mapping[str, Any], *, region: str, account: str, instance_tags: Mapping[str, Mapping[str, str]]
) -> list[Request]:
    """The authorizations one recorded call needs (one per resource it names)."""
    service, operation = call["service"], call["operation"]
    action = _ACTION_OF.get((service, operation), f"{service}:{operation}")
    if service == "s3":
        bucket = call["Bucket"]
        if action in _BUCKET_LEVEL or operation == "HeadBucket":
            return [Request(action, f"arn:aws:s3:::{bucket}")]
        if "Key" not in call:
            raise NotImplementedError(f"s3 {operation} without a key (extend tests/iam_eval.py)")
        return [Request(action, f"arn:aws:s3:::{bucket}/{call['Key']}")]
    if service == "sqs":
        if operation == "ListQueues":
            return [Request(action, "*")]  # the one SQS action IAM cannot scope to queues
        name = call.get("QueueName") or str(call["QueueUrl"]).rstrip("/").rsplit("/", 1)[-1]
        return [Request(action, f"arn:aws:sqs:{region}:{account}:{name}")]
    if service == "ec2":
        if operation.startswith("Describe"):
            return [Request(action, "*")]  # Describe calls are not resource-level in IAM
        return [
            Request(
                action,
                f"arn:aws:ec2:{region}:{account}:instance/{instance_id}",
                {f"aws:ResourceTag/{k}": v for k, v in instance_tags.get(instance_id, {}).items()},
            )
            for instance_id in call["InstanceIds"]
        ]
    raise NotImplementedError(f"{service}:{operation} (extend tests/iam_eval.py)")
