"""The deployment's IAM roles and instance profiles, made from the shipped policy documents
(`facerec aws provision --create-roles`) and removed by `facerec aws teardown`.

Roles are tagged with the deployment's prefix: teardown deletes only roles it can tell provision made.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from facerec.adapters.aws_session import AwsClients
from facerec.adapters.ec2_fleet import PREFIX_TAG
from facerec.settings import Settings

POLICY_NAME = "facerec"
ROLES = ("web", "worker")
# Both tiers run on EC2 instances: only EC2 may assume the roles.
TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}


@dataclass(frozen=True, slots=True)
class RoleNames:
    role: str
    profile: str


def role_names(settings: Settings, role: str) -> RoleNames:
    """`<prefix>-web-role` / `<prefix>-web-profile`, `<prefix>-worker-role` / `<prefix>-worker-profile` (the
    web policy's PassRole statement names the worker role the same way)."""
    return RoleNames(f"{settings.prefix}-{role}-role", f"{settings.prefix}-{role}-profile")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


async def account_id(aws: AwsClients) -> str:
    return str((await (await aws.sts()).get_caller_identity())["Account"])


async def _get(call: Any, **kwargs: Any) -> dict[str, Any] | None:
    try:
        reply: dict[str, Any] = await call(**kwargs)
    except ClientError as exc:
        if _code(exc) == "NoSuchEntity":
            return None
        raise
    return reply


async def ensure_roles(aws: AwsClients, settings: Settings) -> list[Any]:
    """Create (or bring up to date) the web and worker roles, their inline policy and instance profiles."""
    from facerec.provision import Action, render_policy

    iam = await aws.iam()
    account = await account_id(aws)
    actions: list[Action] = []
    for role in ROLES:
        names = role_names(settings, role)
        if await _get(iam.get_role, RoleName=names.role) is None:
            await iam.create_role(
                RoleName=names.role,
                AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
                Description=f"facerec {role} tier of deployment {settings.prefix}",
                Tags=[{"Key": PREFIX_TAG, "Value": settings.prefix}],
            )
            outcome = "created"
        else:
            outcome = "exists"
        wanted = render_policy(role, settings, account)
        current = await _get(iam.get_role_policy, RoleName=names.role, PolicyName=POLICY_NAME)
        document = current.get("PolicyDocument") if current else None
        if isinstance(document, str):  # IAM returns it URL-encoded JSON; boto3 usually decodes it
            document = json.loads(document)
        if document != wanted:
            await iam.put_role_policy(RoleName=names.role, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(wanted))
            outcome = outcome if outcome == "created" else "updated"
        actions.append(Action("role", names.role, outcome, f"policy {POLICY_NAME}"))
        profile = await _get(iam.get_instance_profile, InstanceProfileName=names.profile)
        if profile is None:
            await iam.create_instance_profile(InstanceProfileName=names.profile)
            roles_in: list[str] = []
            profile_outcome = "created"
        else:
            roles_in = [r["RoleName"] for r in profile["InstanceProfile"].get("Roles", [])]
            profile_outcome = "exists"
        if names.role not in roles_in:
            await iam.add_role_to_instance_profile(InstanceProfileName=names.profile, RoleName=names.role)
        actions.append(Action("profile", names.profile, profile_outcome, f"role {names.role}"))
    return actions


async def delete_roles(aws: AwsClients, settings: Settings) -> list[Any]:
    """Remove the instance profiles and the roles provision made (a role without this deployment's tag, made
    by hand under the same name, is left alone and reported)."""
    from facerec.provision import Action

    iam = await aws.iam()
    actions: list[Action] = []
    for role in ROLES:
        names = role_names(settings, role)
        profile = await _get(iam.get_instance_profile, InstanceProfileName=names.profile)
        found = await _get(iam.get_role, RoleName=names.role)
        ours = found is not None and {"Key": PREFIX_TAG, "Value": settings.prefix} in found["Role"].get("Tags", [])
        if profile is not None and (ours or not profile["InstanceProfile"].get("Roles")):
            for member in profile["InstanceProfile"].get("Roles", []):
                await iam.remove_role_from_instance_profile(
                    InstanceProfileName=names.profile, RoleName=member["RoleName"]
                )
            await iam.delete_instance_profile(InstanceProfileName=names.profile)
            actions.append(Action("profile", names.profile, "deleted"))
        elif profile is None:
            actions.append(Action("profile", names.profile, "absent"))
        else:
            actions.append(Action("profile", names.profile, "kept", "not made by provision"))
        if found is None:
            actions.append(Action("role", names.role, "absent"))
            continue
        if not ours:
            actions.append(Action("role", names.role, "kept", f"no {PREFIX_TAG}={settings.prefix} tag"))
            continue
        for policy in (await iam.list_role_policies(RoleName=names.role)).get("PolicyNames", []):
            await iam.delete_role_policy(RoleName=names.role, PolicyName=policy)
        for attached in (await iam.list_attached_role_policies(RoleName=names.role)).get("AttachedPolicies", []):
            await iam.detach_role_policy(RoleName=names.role, PolicyArn=attached["PolicyArn"])
        await iam.delete_role(RoleName=names.role)
        actions.append(Action("role", names.role, "deleted"))
    return actions


async def roles_status(aws: AwsClients, settings: Settings) -> list[Any]:
    from facerec.provision import Action

    iam = await aws.iam()
    actions: list[Action] = []
    for role in ROLES:
        names = role_names(settings, role)
        found = await _get(iam.get_role, RoleName=names.role)
        actions.append(Action("role", names.role, "exists" if found else "absent"))
        profile = await _get(iam.get_instance_profile, InstanceProfileName=names.profile)
        actions.append(Action("profile", names.profile, "exists" if profile else "absent"))
    return actions
