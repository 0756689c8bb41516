"""`facerec aws` failures are one sentence naming the call, the resource and the fix (a traceback only with
--debug); `aws status` exits 1 when a bucket or queue is missing."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from click.testing import CliRunner, Result

from facerec.aws_errors import LastCall, explain
from facerec.cli import main
from facerec.settings import Settings
from facerec.testing import MOTO_REGION
from tests.aws import boto3_client, image_id


def aws(endpoint: str, *args: str, prefix: str | None = None) -> Result:
    prefix = prefix or f"cli-{uuid.uuid4().hex[:8]}"
    argv = ["aws", args[0], "--prefix", prefix, "--region", MOTO_REGION, "--endpoint-url", endpoint, *args[1:]]
    return CliRunner().invoke(main, argv)


def one_sentence(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and result.exception is not None
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    return line


def test_status_exits_1_and_says_how_when_resources_are_missing(moto_endpoint: str) -> None:
    result = aws(moto_endpoint, "status", prefix="nothing-here")
    assert result.exit_code == 1
    assert "absent     bucket   nothing-here-in-bucket" in result.output
    assert "create them with `facerec aws provision --prefix nothing-here`" in result.output


def test_a_missing_instance_profile_says_to_create_the_roles(moto_endpoint: str) -> None:
    ami = image_id(boto3_client("ec2", moto_endpoint))
    prefix = f"cli-{uuid.uuid4().hex[:8]}"
    args = ("provision", "--pool", "1", "--ami", ami, "--instance-profile", "nope")
    line = one_sentence(aws(moto_endpoint, *args, prefix=prefix))
    assert "ec2:RunInstances" in line and "nope" in line and "--create-roles" in line
    # --debug: the traceback instead (the buckets and queues exist now: only the pool fails again).
    assert isinstance(aws(moto_endpoint, *args, "--debug", prefix=prefix).exception, ClientError)


def test_an_unreachable_endpoint_names_it() -> None:
    call = LastCall()
    call("s3", "HeadBucket", {"Bucket": "demo-in-bucket"})
    settings = Settings(backend="aws", aws_endpoint_url="http://127.0.0.1:9")
    sentence = explain(EndpointConnectionError(endpoint_url="http://127.0.0.1:9/demo-in-bucket"), call, settings)
    assert sentence is not None
    assert (
        "cannot reach http://127.0.0.1:9 (s3:HeadBucket on demo-in-bucket)" in sentence and "--endpoint-url" in sentence
    )


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("AccessDenied", "was refused (AccessDenied): run `facerec aws` with credentials"),
        ("InvalidClientTokenId", "AWS rejected the credentials"),
        ("BucketAlreadyExists", "choose another --prefix"),
        ("SomethingElse", "failed (SomethingElse: it broke); rerun with --debug"),
    ],
)
def test_service_errors_name_the_call_and_resource(code: str, expected: str) -> None:
    call = LastCall()
    call("s3", "CreateBucket", {"Bucket": "demo-in-bucket", "Body": b"never logged"})
    error = ClientError({"Error": {"Code": code, "Message": "it broke."}}, "CreateBucket")
    sentence = explain(error, call, Settings(backend="aws"))
    assert sentence is not None and expected in sentence
    assert sentence.startswith("s3:CreateBucket on demo-in-bucket") or "credentials" in sentence


def test_missing_credentials_and_bugs() -> None:
    sentence = explain(NoCredentialsError(), LastCall(), Settings(backend="aws"))
    assert sentence is not None and "AWS_PROFILE" in sentence
    assert explain(KeyError("a bug"), LastCall(), Settings(backend="aws")) is None  # shown with its traceback


def test_logged_errors_carry_the_type_even_without_a_message() -> None:
    from facerec.logs import error_text

    assert error_text(TimeoutError()) == "TimeoutError"  # was logged as "error": ""
    assert error_text(ValueError("bad value")) == "ValueError: bad value"
    assert len(error_text(RuntimeError("x" * 1000))) == 300


def test_enroll_deployment_options_need_store(tmp_path: Path) -> None:
    (tmp_path / "Ada").mkdir()
    result = CliRunner().invoke(
        main, ["enroll", str(tmp_path), "--gallery", str(tmp_path / "g.pt"), "--backend", "aws", "--prefix", "p"]
    )
    assert result.exit_code == 2 and "--backend, --prefix name the store: use them with --store" in result.output
