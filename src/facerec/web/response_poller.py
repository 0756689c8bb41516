"""Background tasks that turn queue messages into resolved futures: long-poll the response queue, and watch
the dead-letter queue so a request that failed repeatedly gets an error instead of hanging.

Neither loop ever dies: any failure is logged and retried with exponential backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from facerec.logs import error_text
from facerec.messages import InvalidMessage, RecognitionResponse, parse_request, parse_response
from facerec.ports import MessageQueue, ReceivedMessage
from facerec.web.pending import PendingRequests

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0


class DeadLettered(Exception):
    """The app tier gave up on a request after the queue's maximum number of deliveries."""


class ResponsePoller:
    def __init__(
        self,
        responses: MessageQueue,
        dead_letters: MessageQueue,
        pending: PendingRequests,
        *,
        pollers: int = 4,
        wait_s: float = 20.0,
        on_response: Callable[[RecognitionResponse], None] | None = None,
    ) -> None:
        """`on_response` sees every valid response, claimed or not (e.g. the metrics of the work it reports)."""
        self._responses = responses
        self._dead_letters = dead_letters
        self._pending = pending
        self._pollers = pollers
        self._wait_s = wait_s
        self._on_response_seen = on_response
        self._tasks: list[asyncio.Task[None]] = []
        self.resolved = 0
        self.dropped = 0
        self.dead_lettered = 0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._forever(self._responses, self._on_response), name=f"response-poller-{i}")
            for i in range(self._pollers)
        ]
        self._tasks.append(
            asyncio.create_task(self._forever(self._dead_letters, self._on_dead_letter), name="dead-letter-poller")
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not any(task.done() for task in self._tasks)

    async def _forever(self, queue: MessageQueue, handle: Callable[[ReceivedMessage], None]) -> None:
        backoff = BACKOFF_START_S
        while True:
            try:
                await self._poll_once(queue, handle)
                backoff = BACKOFF_START_S
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "response_poll_failed",
                    extra={"queue": queue.name, "error": error_text(exc), "retry_in_s": backoff},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _poll_once(self, queue: MessageQueue, handle: Callable[[ReceivedMessage], None]) -> None:
        messages = await queue.receive(max_messages=10, wait_seconds=self._wait_s)
        if not messages:
            return
        for message in messages:
            handle(message)
        # Every message is acknowledged, answered or not: an unknown id (late, or for a previous process)
        # has nobody waiting for it, and redelivering it would not change that.
        await queue.delete_batch([m.receipt for m in messages])

    def _on_response(self, message: ReceivedMessage) -> None:
        try:
            response = parse_response(message.body)
        except InvalidMessage:
            log.warning("response_invalid", extra={"message_id": message.message_id})
            self.dropped += 1
            return
        if self._on_response_seen is not None:
            try:
                self._on_response_seen(response)
            except Exception as exc:  # a listener's failure must never cost the answer
                log.warning("response_listener_failed", extra={"request_id": response.id, "error": error_text(exc)})
        if self._pending.resolve(response):
            self.resolved += 1
        else:
            self.dropped += 1
            log.info("response_unclaimed", extra={"request_id": response.id})

    def _on_dead_letter(self, message: ReceivedMessage) -> None:
        try:
            request = parse_request(message.body)
        except InvalidMessage:
            log.warning("dead_letter_invalid", extra={"message_id": message.message_id})
            return
        self.dead_lettered += 1
        claimed = self._pending.fail(request.id, DeadLettered(f"request {request.id} failed repeatedly"))
        log.warning("request_dead_lettered", extra={"request_id": request.id, "waiting": claimed})
