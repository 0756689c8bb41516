"""One aioboto3 session and long-lived clients per process, opened and closed by the owner's lifespan."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import aioboto3
from botocore.config import Config

from facerec.settings import Settings

# SQS long polls wait up to 20 s: the HTTP read timeout must outlast them.
_CONFIG = Config(
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
        self._clients: dict[str, Any] = {}

    async def __aenter__(self) -> AwsClients:
        await self._stack.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._clients.clear()
        await self._stack.__aexit__(*exc_info)

    async def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = await self._stack.enter_async_context(
                self._session.client(
                    service,
                    region_name=self._settings.aws_region,
                    endpoint_url=self._settings.aws_endpoint_url,
                    config=_CONFIG,
                )
            )
        return self._clients[service]

    async def s3(self) -> Any:
        return await self.client("s3")

    async def sqs(self) -> Any:
        return await self.client("sqs")

    async def ec2(self) -> Any:
        return await self.client("ec2")

    async def aclose(self) -> None:
        await self.__aexit__(None, None, None)
