"""The worker's name: `FACEREC_WORKER_NAME`, else on EC2 its instance id (IMDSv2), else `host-pid`.

The scaler stops the idlest instance first by matching the name in each answer to the fleet's instances; on
EC2 the instance id is the one name both sides know without any user-data change (the fleet lists ids, the
worker reads its own from the instance metadata service).
"""

from __future__ import annotations

import logging
import os
import re
import socket

import httpx

from facerec.settings import Settings

log = logging.getLogger(__name__)

NAME_ENV = "FACEREC_WORKER_NAME"
IMDS_ENDPOINT = "http://169.254.169.254"
IMDS_ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"  # botocore's own override
IMDS_DISABLED_ENV = "AWS_EC2_METADATA_DISABLED"
_INSTANCE_ID = re.compile(r"^i-[0-9a-f]{8,17}$")


def instance_id(endpoint: str | None = None, timeout_s: float = 0.5) -> str | None:
    """This EC2 instance's id from IMDSv2 (token, then the id), or None off EC2 / when IMDS does not answer
    within `timeout_s` per call."""
    if os.environ.get(IMDS_DISABLED_ENV, "").strip().lower() == "true":
        return None
    base = (endpoint or os.environ.get(IMDS_ENDPOINT_ENV) or IMDS_ENDPOINT).rstrip("/")
    # trust_env=False: the link-local metadata address must never go through a proxy.
    try:
        with httpx.Client(timeout=timeout_s, trust_env=False) as client:
            token = client.put(
                f"{base}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
            ).raise_for_status()
            reply = client.get(
                f"{base}/latest/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token.text}
            ).raise_for_status()
    except httpx.HTTPError as exc:
        log.info("instance_metadata_unavailable", extra={"error": type(exc).__name__})
        return None
    found = reply.text.strip()
    if not _INSTANCE_ID.match(found):
        log.warning("instance_metadata_unexpected", extra={"instance_id": found[:40]})
        return None
    return found


def worker_name(settings: Settings | None = None) -> str:
    """`FACEREC_WORKER_NAME`; else, with the AWS backend, the instance id; else `host-pid`."""
    if name := os.environ.get(NAME_ENV):
        return name
    if settings is not None and settings.backend == "aws" and (found := instance_id()):
        return found
    return f"{socket.gethostname()}-{os.getpid()}"
