"""One sentence for a failed `facerec aws` command: what was being done to which resource, and the fix."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from facerec.settings import Settings

# The parameters that name the resource a call is about, most specific first.
_RESOURCE_PARAMS = ("InstanceProfileName", "RoleName", "QueueName", "QueueUrl", "Bucket", "InstanceIds", "ImageId")
_DENIED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnrecognizedClientException"}
_BAD_CREDENTIALS = {
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "AuthFailure",
    "ExpiredToken",
    "InvalidAccessKeyId",
}


@dataclass
class LastCall:
    """Hook for `AwsClients(on_call=...)`: remembers the call in progress, so a failure can name its resource."""

    service: str = ""
    operation: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def __call__(self, service: str, operation: str, params: Mapping[str, Any]) -> None:
        self.service, self.operation, self.params = service, operation, dict(params)

    @property
    def resource(self) -> str:
        for key in _RESOURCE_PARAMS:
            value = self.params.get(key)
            if value:
                text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
                return text.rstrip("/").rsplit("/", 1)[-1] if key == "QueueUrl" else text
        return ""


def explain(exc: BaseException, call: LastCall, settings: Settings) -> str | None:
    """The sentence for an AWS failure, or None when `exc` is not one (a bug: the traceback is then shown)."""
    what = f"{call.service}:{call.operation}" if call.operation else "the AWS call"
    on = f" on {call.resource}" if call.resource else ""
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return "no AWS credentials found: set AWS_PROFILE (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and retry."
    if isinstance(exc, NoRegionError):
        return "no AWS region: pass --region or set FACEREC_AWS_REGION."
    if isinstance(exc, EndpointConnectionError):
        endpoint = settings.aws_endpoint_url or f"AWS in {settings.aws_region}"
        return f"cannot reach {endpoint} ({what}{on}): check --region, --endpoint-url and the network, then retry."
    if not isinstance(exc, ClientError):
        return None
    error = exc.response.get("Error", {})
    code, message = str(error.get("Code", "")), str(error.get("Message", "")).rstrip(".")
    if code in _DENIED:
        return (
            f"{what}{on} was refused ({code}): run `facerec aws` with credentials that may create and delete "
            f"this deployment's resources (an administrator's AWS_PROFILE)."
        )
    if code in _BAD_CREDENTIALS:
        return f"AWS rejected the credentials ({code}: {message}): check AWS_PROFILE or the access keys."
    if code == "NoSuchEntity" or ("profile" in message.lower() and code.startswith("InvalidParameter")):
        return (
            f"{what}{on} failed: {message}: pass --create-roles to make the roles and instance profiles, "
            f"or --instance-profile NAME of an existing profile."
        )
    if code.startswith("InvalidAMIID"):
        return f"{what}{on} failed: {message}: pass --ami with an image id of {settings.aws_region}."
    if code in {"BucketAlreadyExists", "EntityAlreadyExists"}:
        return f"{what}{on} failed: {message}: the name belongs to someone else; choose another --prefix."
    return f"{what}{on} failed ({code}: {message}); rerun with --debug for the traceback."
