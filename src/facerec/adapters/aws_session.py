"""One aioboto3 session and long-lived clients per process, opened and closed by the owner's lifespan."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import aioboto3
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.loaders import Loader, create_loader

from facerec.settings import Settings

if TYPE_CHECKING:  # the stub packages come with the `test` extra; annotations only, never imported at run time
    from types_aiobotocore_ec2 import EC2Client
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_sqs import SQSClient

_C = TypeVar("_C", bound=Any)

# SQS long polls wait up to 20 s: the HTTP read timeout must outlast them. AioConfig is what aiobotocore
# builds from any botocore Config it is given (the same defaults), and what the client stubs accept.
_CONFIG = AioConfig(
    read_timeout=30,
    connect_timeout=5,
    retries={"max_attempts": 4, "mode": "adaptive"},
    max_pool_connections=64,
)


_LOADER_LOCK = threading.Lock()
_LOADER: Loader | None = None


def shared_data_loader() -> Loader:
    """One botocore data loader per process. Each new botocore session otherwise reads and parses the service
    models again (EC2's is a 5 MB JSON file): measured ~15 s of the test suite, where many data tiers are opened,
    and the same cost for every `facerec aws` command or web process that opens more than one. The loader only
    caches what it read; the models it returns are shared between clients as they already are within a session."""
    global _LOADER
    with _LOADER_LOCK:
        if _LOADER is None:
            _LOADER = create_loader()
        return _LOADER


def new_session(region: str | None) -> aioboto3.Session:
    """An aioboto3 session for `region` that reads service models through the process's shared loader."""
    loader = shared_data_loader()
    core = get_session()
    core.register_component("data_loader", loader)
    with _LOADER_LOCK:
        session = aioboto3.Session(botocore_session=core, region_name=region)
        # Each boto3 session appends its resource-model folder to the loader's search path: once is enough.
        loader.search_paths[:] = list(dict.fromkeys(loader.search_paths))
    return session


CallHook = Callable[[str, str, Mapping[str, Any]], None]
"""(service, operation, parameters) of every API call, before it is sent: error messages name the resource
the failed call was about, and tests record which calls each role makes."""


_LOGGED_PARAMS = ("Bucket", "Key", "Prefix", "QueueUrl", "QueueName", "InstanceIds")
"""What names a call's resource; never bodies, message contents or credentials."""


class CallLog:
    """`FACEREC_AWS_CALL_LOG`: one JSON line per AWS call (service, operation, the parameters naming the
    resource), to see which permissions a role really uses; the IAM tests check them against the policies."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def __call__(self, service: str, operation: str, params: Mapping[str, Any]) -> None:
        named = {key: params[key] for key in _LOGGED_PARAMS if key in params}
        line = json.dumps({"service": service, "operation": operation, **named}, default=str)
        with self._lock, self._path.open("a", encoding="utf-8") as sink:
            sink.write(line + "\n")


class AwsClients:
    """`async with AwsClients(settings) as aws:` then `aws.s3`, `aws.sqs`, `aws.ec2` (created on first use)."""

    def __init__(
        self, settings: Settings, session: aioboto3.Session | None = None, on_call: CallHook | None = None
    ) -> None:
        self._settings = settings
        self._on_call = on_call or (CallLog(settings.aws_call_log) if settings.aws_call_log else None)
        self._session = session or new_session(settings.aws_region)
        self._stack = AsyncExitStack()
        self._s3: S3Client | None = None
        self._sqs: SQSClient | None = None
        self._ec2: EC2Client | None = None
        self._others: dict[str, Any] = {}

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
        self._others = {}
        await self._stack.__aexit__(exc_type, exc, traceback)

    # One method per service: the SDK's stubs type each client by its literal service name.
    async def s3(self) -> S3Client:
        if self._s3 is None:
            self._s3 = self._hooked(
                "s3",
                await self._stack.enter_async_context(
                    self._session.client(
                        "s3",
                        region_name=self._settings.aws_region,
                        endpoint_url=self._settings.aws_endpoint_url,
                        config=_CONFIG,
                    )
                ),
            )
        return self._s3

    async def sqs(self) -> SQSClient:
        if self._sqs is None:
            self._sqs = self._hooked(
                "sqs",
                await self._stack.enter_async_context(
                    self._session.client(
                        "sqs",
                        region_name=self._settings.aws_region,
                        endpoint_url=self._settings.aws_endpoint_url,
                        config=_CONFIG,
                    )
                ),
            )
        return self._sqs

    async def ec2(self) -> EC2Client:
        if self._ec2 is None:
            self._ec2 = self._hooked(
                "ec2",
                await self._stack.enter_async_context(
                    self._session.client(
                        "ec2",
                        region_name=self._settings.aws_region,
                        endpoint_url=self._settings.aws_endpoint_url,
                        config=_CONFIG,
                    )
                ),
            )
        return self._ec2

    # IAM and STS only serve `facerec aws` (no stub packages are installed for them: typed Any).
    async def iam(self) -> Any:
        return await self._other("iam")

    async def sts(self) -> Any:
        return await self._other("sts")

    async def _other(self, service: str) -> Any:
        if service not in self._others:
            self._others[service] = self._hooked(
                service,
                await self._stack.enter_async_context(
                    self._session.client(  # type: ignore[call-overload]
                        service,
                        region_name=self._settings.aws_region,
                        endpoint_url=self._settings.aws_endpoint_url,
                        config=_CONFIG,
                    )
                ),
            )
        return self._others[service]

    def _hooked(self, service: str, client: _C) -> _C:
        if self._on_call is not None:
            hook = self._on_call

            def before(params: Mapping[str, Any], model: Any, **_: Any) -> None:
                hook(service, model.name, params)

            client.meta.events.register(f"provide-client-params.{service}.*", before)
        return client

    async def aclose(self) -> None:
        await self.__aexit__(None, None, None)
