"""A BlobStore on an S3 bucket (or any S3-compatible endpoint) through the process's shared aioboto3 client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

from botocore.exceptions import BotoCoreError, ClientError

from facerec.adapters.aws_session import AwsClients
from facerec.ports import BlobNotFound, InvalidKey, PortError

KEY_MAX_BYTES = 1024
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


@contextlib.contextmanager
def aws_errors(what: str) -> Iterator[None]:
    """botocore failures (service errors, connection errors, missing credentials) -> PortError."""
    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        raise PortError(f"{what}: {code}: {exc}") from exc
    except (BotoCoreError, OSError) as exc:
        raise PortError(f"{what}: {exc}") from exc


def _check_key(key: str) -> None:
    if not key or len(key.encode("utf-8")) > KEY_MAX_BYTES:
        raise InvalidKey(f"key must be 1..{KEY_MAX_BYTES} bytes")


class S3BlobStore:
    def __init__(self, aws: AwsClients, bucket: str) -> None:
        self._aws = aws
        self.name = bucket

    async def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        _check_key(key)
        with aws_errors(f"s3 put {self.name}"):
            s3 = await self._aws.s3()
            await s3.put_object(Bucket=self.name, Key=key, Body=bytes(data), ContentType=content_type)

    async def get(self, key: str) -> bytes:
        _check_key(key)
        try:
            with aws_errors(f"s3 get {self.name}"):
                s3 = await self._aws.s3()
                response = await s3.get_object(Bucket=self.name, Key=key)
                async with response["Body"] as stream:
                    return bytes(await stream.read())
        except PortError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") in _NOT_FOUND_CODES:
                raise BlobNotFound(key) from None
            raise

    async def delete(self, key: str) -> None:
        _check_key(key)
        with aws_errors(f"s3 delete {self.name}"):
            s3 = await self._aws.s3()
            await s3.delete_object(Bucket=self.name, Key=key)

    async def _pages(self, prefix: str, page_size: int = 1000) -> AsyncIterator[list[str]]:
        with aws_errors(f"s3 list {self.name}"):
            s3 = await self._aws.s3()
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(
                Bucket=self.name, Prefix=prefix, PaginationConfig={"PageSize": page_size}
            ):
                yield [item["Key"] for item in page.get("Contents", [])]

    async def list(self, prefix: str = "", limit: int | None = None) -> list[str]:
        keys: list[str] = []
        page_size = 1000 if limit is None else max(1, min(limit, 1000))
        async for page in self._pages(prefix, page_size):
            keys.extend(page)
            if limit is not None and len(keys) >= limit:
                break
        # S3 already returns keys in UTF-8 byte order, which equals Python's code point order.
        return keys if limit is None else keys[:limit]

    async def count(self, prefix: str = "") -> int:
        total = 0
        async for page in self._pages(prefix):
            total += len(page)
        return total

    async def check(self) -> None:
        with aws_errors(f"s3 bucket {self.name}"):
            s3 = await self._aws.s3()
            await s3.head_bucket(Bucket=self.name)
