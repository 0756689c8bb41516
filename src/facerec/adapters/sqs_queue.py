"""A MessageQueue on SQS (or any SQS-compatible endpoint).

Dead-lettering is SQS's redrive policy, set up by `facerec aws provision`: this adapter never moves messages
itself. SQS takes whole seconds for waits and visibility timeouts: waits are rounded down (never longer than
asked), visibility timeouts up (a message is never released earlier than asked).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from facerec.adapters.aws_session import AwsClients
from facerec.adapters.s3_blob import aws_errors
from facerec.ports import MessageTooLarge, PortError, QueueStats, ReceivedMessage

if TYPE_CHECKING:  # stubs from the `test` extra, for annotations only
    from types_aiobotocore_sqs.type_defs import (
        ChangeMessageVisibilityBatchRequestEntryTypeDef,
        ChangeMessageVisibilityBatchResultTypeDef,
        DeleteMessageBatchRequestEntryTypeDef,
        DeleteMessageBatchResultTypeDef,
        SendMessageBatchRequestEntryTypeDef,
    )

log = logging.getLogger(__name__)

BATCH_MAX = 10
WAIT_MAX_S = 20
VISIBILITY_MAX_S = 43_200
MISSING_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


def is_missing_queue(exc: BaseException | None) -> bool:
    """Whether `exc` (a ClientError, e.g. a PortError's cause) says the queue does not exist."""
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in MISSING_QUEUE_CODES


def _chunks(items: Sequence[str], size: int = BATCH_MAX) -> list[Sequence[str]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _visibility_seconds(timeout: float) -> int:
    return max(0, min(VISIBILITY_MAX_S, math.ceil(timeout)))


class SqsQueue:
    """Use `await SqsQueue.from_name(aws, name)` to resolve the URL and the queue's own size limit."""

    receive_cancel_safe = False
    """Closing the connection of a long poll does not end it on the server: the messages it then takes are
    hidden for a visibility timeout and one of their receives is spent. Workers poll in short slices instead
    and let the slice in flight finish (`worker_poll_slice_s`)."""

    def __init__(self, aws: AwsClients, queue_url: str, name: str | None = None, max_message_bytes: int = 1024) -> None:
        self._aws = aws
        self.url = queue_url
        self.name = name or queue_url.rstrip("/").rsplit("/", 1)[-1]
        self.max_message_bytes = max_message_bytes

    @classmethod
    async def from_name(cls, aws: AwsClients, name: str) -> SqsQueue:
        """Raises PortError naming the queue (and how to create it) when it does not exist."""
        try:
            with aws_errors(f"sqs queue {name}"):
                sqs = await aws.sqs()
                url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
                attributes = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["MaximumMessageSize"])
        except PortError as exc:
            if is_missing_queue(exc.__cause__):
                raise PortError(f"SQS queue {name!r} does not exist: run `facerec aws provision`") from exc.__cause__
            raise
        limit = int(attributes.get("Attributes", {}).get("MaximumMessageSize", 262_144))
        return cls(aws, url, name, max_message_bytes=limit)

    def _check_size(self, body: str) -> None:
        size = len(body.encode("utf-8"))
        if size > self.max_message_bytes:
            raise MessageTooLarge(f"{size} bytes > {self.max_message_bytes}")

    async def send(self, body: str) -> str:
        self._check_size(body)
        with aws_errors(f"sqs send {self.name}"):
            sqs = await self._aws.sqs()
            response = await sqs.send_message(QueueUrl=self.url, MessageBody=body)
        return str(response["MessageId"])

    async def send_batch(self, bodies: Sequence[str]) -> list[str]:
        for body in bodies:
            self._check_size(body)
        ids: list[str] = []
        for chunk in _chunks(bodies):
            entries: list[SendMessageBatchRequestEntryTypeDef] = [
                {"Id": str(i), "MessageBody": body} for i, body in enumerate(chunk)
            ]
            with aws_errors(f"sqs send_batch {self.name}"):
                sqs = await self._aws.sqs()
                response = await sqs.send_message_batch(QueueUrl=self.url, Entries=entries)
            if response.get("Failed"):
                failed = response["Failed"]
                raise PortError(f"sqs send_batch {self.name}: {len(failed)} failed, first: {failed[0]}")
            by_entry = {item["Id"]: item["MessageId"] for item in response.get("Successful", [])}
            ids.extend(by_entry[str(i)] for i in range(len(chunk)))
        return ids

    async def receive(
        self, max_messages: int = 10, wait_seconds: float = 0.0, visibility_timeout: float | None = None
    ) -> list[ReceivedMessage]:
        request: dict[str, Any] = {
            "QueueUrl": self.url,
            "MaxNumberOfMessages": max(1, min(max_messages, BATCH_MAX)),
            "WaitTimeSeconds": max(0, min(WAIT_MAX_S, math.floor(wait_seconds))),
            "AttributeNames": ["ApproximateReceiveCount"],
            "MessageSystemAttributeNames": ["ApproximateReceiveCount"],
        }
        if visibility_timeout is not None:
            request["VisibilityTimeout"] = _visibility_seconds(visibility_timeout)
        with aws_errors(f"sqs receive {self.name}"):
            sqs = await self._aws.sqs()
            response = await sqs.receive_message(**request)
        return [
            ReceivedMessage(
                message_id=message["MessageId"],
                body=message["Body"],
                receipt=message["ReceiptHandle"],
                receive_count=int(message.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
            )
            for message in response.get("Messages", [])
        ]

    def _raise_server_failures(
        self, action: str, response: DeleteMessageBatchResultTypeDef | ChangeMessageVisibilityBatchResultTypeDef
    ) -> None:
        # Sender faults are stale or unknown receipts: ignored, as the port promises. Server faults are not.
        failed = response.get("Failed", [])
        server_side = [item for item in failed if not item.get("SenderFault", False)]
        if failed:
            log.debug("sqs_batch_entries_ignored", extra={"queue": self.name, "action": action, "count": len(failed)})
        if server_side:
            raise PortError(f"sqs {action} {self.name}: {len(server_side)} failed, first: {server_side[0]}")

    async def delete_batch(self, receipts: Sequence[str]) -> None:
        for chunk in _chunks(receipts):
            entries: list[DeleteMessageBatchRequestEntryTypeDef] = [
                {"Id": str(i), "ReceiptHandle": receipt} for i, receipt in enumerate(chunk)
            ]
            with aws_errors(f"sqs delete_batch {self.name}"):
                sqs = await self._aws.sqs()
                response = await sqs.delete_message_batch(QueueUrl=self.url, Entries=entries)
            self._raise_server_failures("delete_batch", response)

    async def change_visibility(self, receipts: Sequence[str], timeout_seconds: float) -> None:
        seconds = _visibility_seconds(timeout_seconds)
        for chunk in _chunks(receipts):
            entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
                {"Id": str(i), "ReceiptHandle": receipt, "VisibilityTimeout": seconds}
                for i, receipt in enumerate(chunk)
            ]
            with aws_errors(f"sqs change_visibility {self.name}"):
                sqs = await self._aws.sqs()
                response = await sqs.change_message_visibility_batch(QueueUrl=self.url, Entries=entries)
            self._raise_server_failures("change_visibility", response)

    async def stats(self) -> QueueStats:
        with aws_errors(f"sqs stats {self.name}"):
            sqs = await self._aws.sqs()
            response = await sqs.get_queue_attributes(
                QueueUrl=self.url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )
        attributes = response.get("Attributes", {})
        return QueueStats(
            visible=int(attributes.get("ApproximateNumberOfMessages", 0)),
            in_flight=int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        )

    async def check(self) -> None:
        await self.stats()
