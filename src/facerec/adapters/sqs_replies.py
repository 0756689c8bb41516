"""ReplyQueues on SQS: one queue `<prefix>-resp-<web id>` per additional web process (the AWS temporary-queue
pattern), created with the fixed response queue's attributes, found by name, and listed by name prefix.

Workers only open these queues and send to them (their role may GetQueueUrl and SendMessage on
`<prefix>-resp-<web id>`, nothing else): a handle is built from the URL alone, with the fixed response queue's
size limit, so opening one costs one GetQueueUrl (every `open` asks SQS: a queue another process deleted is not
found; the worker keeps the handles it uses). A send to a queue deleted since (its web process stopped or was
reaped) raises QueueNotFound.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from facerec.adapters.aws_session import AwsClients
from facerec.adapters.s3_blob import aws_errors
from facerec.adapters.sqs_queue import SqsQueue, is_missing_queue
from facerec.ports import PortError, QueueNotFound, QueueStats, ReceivedMessage
from facerec.reply_names import check_reply_queue_name, is_process_reply_queue
from facerec.settings import Settings

if TYPE_CHECKING:  # stubs from the `test` extra, for annotations only
    from types_aiobotocore_sqs.literals import QueueAttributeNameType

log = logging.getLogger(__name__)

COPIED_ATTRIBUTES: tuple[QueueAttributeNameType, ...] = (
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "VisibilityTimeout",
    "ReceiveMessageWaitTimeSeconds",
    "DelaySeconds",
)
"""What a reply queue takes over from `<prefix>-resp-queue`: it carries the same messages, so the same limits."""
LIST_PAGE = 1000


@contextlib.contextmanager
def missing_as_not_found(name: str) -> Iterator[None]:
    """A PortError whose cause says the queue does not exist becomes QueueNotFound(name)."""
    try:
        yield
    except PortError as exc:
        if is_missing_queue(exc.__cause__):
            raise QueueNotFound(name) from exc
        raise


class SqsReplyQueue(SqsQueue):
    """A reply queue's handle: any call on a queue that is gone raises QueueNotFound (not PortError), so a worker
    acknowledges the request instead of retrying an answer nobody waits for, and a web process whose queue was
    reaped under it learns it at its next receive."""

    async def send(self, body: str) -> str:
        with self._gone_as_not_found():
            return await super().send(body)

    async def send_batch(self, bodies: Sequence[str]) -> builtins.list[str]:
        with self._gone_as_not_found():
            return await super().send_batch(bodies)

    async def receive(
        self, max_messages: int = 10, wait_seconds: float = 0.0, visibility_timeout: float | None = None
    ) -> builtins.list[ReceivedMessage]:
        with self._gone_as_not_found():
            return await super().receive(max_messages, wait_seconds, visibility_timeout)

    async def delete_batch(self, receipts: Sequence[str]) -> None:
        with self._gone_as_not_found():
            await super().delete_batch(receipts)

    async def change_visibility(self, receipts: Sequence[str], timeout_seconds: float) -> None:
        with self._gone_as_not_found():
            await super().change_visibility(receipts, timeout_seconds)

    async def stats(self) -> QueueStats:
        with self._gone_as_not_found():
            return await super().stats()

    async def check(self) -> None:
        await SqsQueue.stats(self)  # the port's PortError (naming the queue) for readiness, gone or not

    def _gone_as_not_found(self) -> contextlib.AbstractContextManager[None]:
        return missing_as_not_found(self.name)


class SqsReplyQueues:
    """`responses` is the deployment's fixed `<prefix>-resp-queue`: its attributes (read once, on the first
    `create`) and size limit are the reply queues' own."""

    def __init__(self, aws: AwsClients, settings: Settings, responses: SqsQueue) -> None:
        self._aws = aws
        self._settings = settings
        self._responses = responses
        self._attributes: dict[QueueAttributeNameType, str] | None = None

    def _check_name(self, name: str) -> None:
        check_reply_queue_name(self._settings.prefix, name)

    def _handle(self, name: str, url: str) -> SqsReplyQueue:
        return SqsReplyQueue(self._aws, url, name, self._responses.max_message_bytes)

    async def _response_attributes(self) -> dict[QueueAttributeNameType, str]:
        if self._attributes is None:
            with aws_errors(f"sqs attributes {self._responses.name}"):
                sqs = await self._aws.sqs()
                reply = await sqs.get_queue_attributes(
                    QueueUrl=self._responses.url, AttributeNames=list(COPIED_ATTRIBUTES)
                )
            found = reply.get("Attributes", {})
            self._attributes = {key: found[key] for key in COPIED_ATTRIBUTES if key in found}
        return self._attributes

    async def create(self, name: str) -> SqsReplyQueue:
        """Idempotent: CreateQueue returns the existing queue's URL when its attributes are the same."""
        self._check_name(name)
        attributes = await self._response_attributes()
        with aws_errors(f"sqs create {name}"):
            sqs = await self._aws.sqs()
            url = (await sqs.create_queue(QueueName=name, Attributes=dict(attributes)))["QueueUrl"]
        log.info("reply_queue_created", extra={"queue": name})
        return self._handle(name, url)

    async def open(self, name: str) -> SqsReplyQueue:
        if not is_process_reply_queue(self._settings.prefix, name):
            raise QueueNotFound(name)  # never a handle on another queue a message merely names
        with missing_as_not_found(name), aws_errors(f"sqs queue {name}"):
            sqs = await self._aws.sqs()
            url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
        return self._handle(name, url)

    async def delete(self, name: str) -> None:
        self._check_name(name)
        try:
            with missing_as_not_found(name), aws_errors(f"sqs delete queue {name}"):
                sqs = await self._aws.sqs()
                url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
                await sqs.delete_queue(QueueUrl=url)
        except QueueNotFound:
            return  # deleting a missing queue is not an error
        log.info("reply_queue_deleted", extra={"queue": name})

    async def list(self) -> builtins.list[str]:
        return sorted(await reply_queue_urls(self._aws, self._settings))


async def reply_queue_urls(aws: AwsClients, settings: Settings) -> dict[str, str]:
    """Name -> URL of the deployment's per-process reply queues: ListQueues by the name prefix `<prefix>-resp-`,
    page by page; what else shares the prefix (the fixed queue, another deployment whose prefix starts the same)
    is filtered out by name."""
    found: dict[str, str] = {}
    request: dict[str, object] = {"QueueNamePrefix": f"{settings.prefix}-resp-", "MaxResults": LIST_PAGE}
    with aws_errors("sqs list reply queues"):
        sqs = await aws.sqs()
        while True:
            reply = await sqs.list_queues(**request)  # type: ignore[arg-type]
            for url in reply.get("QueueUrls", []):
                name = url.rstrip("/").rsplit("/", 1)[-1]
                if is_process_reply_queue(settings.prefix, name):
                    found[name] = url
            token = reply.get("NextToken")
            if not token:
                return found
            request["NextToken"] = token
