"""One aioboto3 session and long-lived clients per process, opened and closed by the owner's lifespan."""

from __future__ import annotations

from contextlib import AsyncExitStack
from types import TracebackType
from typing import TYPE_CHECKING

import aioboto3
from aiobotocore.config import AioConfig

from facerec.settings import Settings

if TYPE_CHECKING:  # the stub packages come with the `test` extra; annotations only, never imported at run time
    from types_aiobotocore_ec2 import EC2Client
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_sqs import SQSClient

# SQS long polls wait up to 20 s: the HTTP read timeout must outlast them. AioConfig is what aiobotocore
# builds from any botocore Config it is given (the same defaults), and what the client stubs accept.
_CONFIG = AioConfig(
    read_timeout=30,
    connect_timeout=5,
    retries={"max_attempts": 4, "mode": "adaptive"},
    max_pool_connections=64,
)


class AwsClients:
    """`async with AwsClients(settings) as aws:` then `aws.s3`, `aws.sqs`, `aws.ec2` (created on first use)."""

    def __init__(self, settings: Settings, session: aioboto3.Session | None = None) -> None:
        self._settings = settings
        self._session = session or aioboto3.Session(region_name=settings.aws_region)
        self._stack = AsyncExitStack()
        self._s3: S3Client | None = None
        self._sqs: SQSClient | None = None
        self._ec2: EC2Client | None = None

    async def __aenter__(self) -> AwsClients:
        await self._stack.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._s3 = self._sqs = self._ec2 = None
        await self._stack.__aexit__(exc_type, exc, traceback)

    # One method per service: the SDK's stubs type each client by its literal service name.
    async def s3(self) -> S3Client:
        if self._s3 is None:
            self._s3 = await self._stack.enter_async_context(
                self._session.client(
                    "s3",
                    region_name=self._settings.aws_region,
                    endpoint_url=self._settings.aws_endpoint_url,
                    config=_CONFIG,
                )
            )
        return self._s3

    async def sqs(self) -> SQSClient:
        if self._sqs is None:
            self._sqs = await self._stack.enter_async_context(
                self._session.client(
                    "sqs",
                    region_name=self._settings.aws_region,
                    endpoint_url=self._settings.aws_endpoint_url,
                    config=_CONFIG,
                )
            )
        return self._sqs

    async def ec2(self) -> EC2Client:
        if self._ec2 is None:
            self._ec2 = await self._stack.enter_async_context(
                self._session.client(
                    "ec2",
                    region_name=self._settings.aws_region,
                    endpoint_url=self._settings.aws_endpoint_url,
                    config=_CONFIG,
                )
            )
        return self._ec2

    async def aclose(self) -> None:
        await self.__aexit__(None, None, None)
