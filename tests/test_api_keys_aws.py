"""API keys on AWS: `facerec keys` keeps their hashes in the deployment's gallery bucket (through the blob-store
port), and the web tier on S3/SQS honours them, revocation included (moto)."""

from __future__ import annotations

import asyncio
import uuid

import boto3
from click.testing import CliRunner

from facerec import api_keys
from facerec.backend import open_data_tier
from facerec.cli import main
from facerec.testing import jpeg_bytes
from tests.aws import REGION, create_aws_resources, moto_settings
from tests.web.harness import running_web


async def keys_cli(endpoint: str, prefix: str, *args: str) -> str:
    argv = ["keys", *args, "--backend", "aws", "--prefix", prefix]
    env = {"FACEREC_AWS_ENDPOINT_URL": endpoint, "FACEREC_AWS_REGION": REGION}
    result = await asyncio.to_thread(CliRunner(env=env).invoke, main, argv)
    assert result.exit_code == 0, result.output
    return result.stdout


async def test_keys_made_by_the_cli_live_hashed_in_the_gallery_bucket_and_guard_the_web_tier(
    moto_endpoint: str,
) -> None:
    prefix = f"keys-{uuid.uuid4().hex[:8]}"
    settings = moto_settings(moto_endpoint, prefix=prefix)
    await asyncio.to_thread(create_aws_resources, settings)
    key = (await keys_cli(moto_endpoint, prefix, "create", "--role", "manage")).splitlines()[-1]
    objects = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION).list_objects_v2(
        Bucket=settings.gallery_bucket
    )
    stored = [item["Key"] for item in objects["Contents"]]
    assert stored == [f"api-keys/{key.split('_')[1]}.json"]
    photo = {"files": [("photos", ("a.jpg", jpeg_bytes(), "image/jpeg"))]}
    async with running_web(
        answer=None,
        data_tier=open_data_tier,
        backend="aws",
        prefix=prefix,
        aws_endpoint_url=moto_endpoint,
        aws_region=REGION,
        host="0.0.0.0",
        web_poll_wait_s=0.1,
    ) as web:
        without = await web.client.delete("/v1/people/Ada")
        with_key = await web.client.delete("/v1/people/Ada", headers={"Authorization": f"Bearer {key}"})
        assert web.data.gallery is not None
        assert await api_keys.revoke_key(web.data.gallery, key.split("_")[1])
        revoked = await web.client.post("/v1/people/Ada/photos", headers={"Authorization": f"Bearer {key}"}, **photo)
    assert without.status_code == 401
    assert with_key.status_code == 404  # authorized; nobody by that name
    assert revoked.status_code == 401
