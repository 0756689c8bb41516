"""Background tasks that turn queue messages into resolved futures: long-poll this process's response queue,
and watch the dead-letter queue so a request that failed repeatedly gets an error instead of hanging.

The dead-letter queue is shared by every web process of a deployment, so a dead letter is routed by the
request's `reply_to`: this process's own request fails its future here; another process's is answered through
that process's reply queue with a `dead_lettered` error response (which its owner turns into the same 502), and
only then deleted. A dead letter is never dropped by a process it does not belong to, unless the queue it
names is gone (its process stopped: nobody waits for it).

Neither loop ever dies: any failure is logged and retried with exponential backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from facerec.logs import error_text
from facerec.messages import (
    ErrorCode,
    InvalidMessage,
    RecognitionRequest,
    RecognitionResponse,
    ResponseError,
    parse_request,
    parse_response,
)
from facerec.ports import MessageQueue, QueueNotFound, ReceivedMessage, ReplyQueues
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
        own_reply_queue: str | None = None,
        replies: ReplyQueues | None = None,
        fixed_responses: MessageQueue | None = None,
    ) -> None:
        """`responses` is the queue this process reads its answers from: the fixed response queue, or its own
        reply queue, named `own_reply_queue` (None: it reads the fixed one). `replies` opens other processes'
        reply queues and `fixed_responses` is the fixed queue (default: `responses` when this process reads it),
        to answer their dead letters. `on_response` sees every valid response, claimed or not (e.g. the metrics
        of the work it reports)."""
        self._responses = responses
        self._dead_letters = dead_letters
        self._own_reply_queue = own_reply_queue
        self._replies = replies
        self._fixed = fixed_responses if fixed_responses is not None or own_reply_queue is not None else responses
        self._pending = pending
        self._pollers = pollers
        self._wait_s = wait_s
        self._on_response_seen = on_response
        self._tasks: list[asyncio.Task[None]] = []
        self.resolved = 0
        self.dropped = 0
        self.dead_lettered = 0
        """Dead letters of this process's own requests."""
        self.dead_letters_routed = 0
        """Dead letters of other processes' requests, answered through their reply queues."""

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._forever(self._responses, self._poll_responses), name=f"response-poller-{i}")
            for i in range(self._pollers)
        ]
        self._tasks.append(
            asyncio.create_task(self._forever(self._dead_letters, self._poll_dead_letters), name="dead-letter-poller")
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

    async def _forever(self, queue: MessageQueue, poll_once: Callable[[MessageQueue], Awaitable[None]]) -> None:
        backoff = BACKOFF_START_S
        while True:
            try:
                await poll_once(queue)
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

    async def _poll_responses(self, queue: MessageQueue) -> None:
        messages = await queue.receive(max_messages=10, wait_seconds=self._wait_s)
        if not messages:
            return
        for message in messages:
            self._on_response(message)
        # Every message is acknowledged, answered or not: an unknown id (late, or for a previous process)
        # has nobody waiting for it, and redelivering it would not change that.
        await queue.delete_batch([m.receipt for m in messages])

    async def _poll_dead_letters(self, queue: MessageQueue) -> None:
        messages = await queue.receive(max_messages=10, wait_seconds=self._wait_s)
        if not messages:
            return
        # Sequential: dead letters are rare, and each is deleted only once it reached whoever waits for it.
        settled = [message.receipt for message in messages if await self._on_dead_letter(message)]
        await queue.delete_batch(settled)

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

    def _reply_queue_of(self, request: RecognitionRequest) -> str | None:
        """The queue the request's answer goes to; None for the fixed response queue."""
        target = request.reply_to
        if target is not None and self._fixed is not None and target == self._fixed.name:
            return None
        return target

    async def _on_dead_letter(self, message: ReceivedMessage) -> bool:
        """Whether the dead letter is settled (may be deleted): failed here, or answered where it belongs."""
        try:
            request = parse_request(message.body)
        except InvalidMessage:
            log.warning("dead_letter_invalid", extra={"message_id": message.message_id})
            return True  # nobody can be waiting for a body that is not a request
        target = self._reply_queue_of(request)
        if target == self._own_reply_queue:
            self.dead_lettered += 1
            claimed = self._pending.fail(request.id, DeadLettered(f"request {request.id} failed repeatedly"))
            log.warning("request_dead_lettered", extra={"request_id": request.id, "waiting": claimed})
            return True
        return await self._route_dead_letter(request, target)

    async def _queue_for(self, target: str | None) -> MessageQueue | None:
        """The queue named `target` (None: the fixed one), or None when this process has no way to reach it."""
        if target is None:
            return self._fixed
        return None if self._replies is None else await self._replies.open(target)

    async def _route_dead_letter(self, request: RecognitionRequest, target: str | None) -> bool:
        """Answer another process's dead letter on its reply queue (the fixed one for None)."""
        response = RecognitionResponse(
            id=request.id, error=ResponseError(code=ErrorCode.DEAD_LETTERED, message="processing failed repeatedly")
        )
        where = target or (self._fixed.name if self._fixed is not None else "fixed response queue")
        try:
            queue = await self._queue_for(target)
            if queue is None:
                # Left for a process that can reach that queue (every process watches the dead letters).
                log.info("dead_letter_left", extra={"request_id": request.id, "reply_to": where})
                return False
            await queue.send(response.to_json())
        except QueueNotFound:
            # Its process stopped or was reaped (or the name was never a reply queue): nobody waits for it.
            log.warning("dead_letter_reply_queue_gone", extra={"request_id": request.id, "reply_to": where})
            return True
        except Exception as exc:
            # Kept (not deleted): it comes back after its visibility timeout and is routed again.
            log.warning(
                "dead_letter_route_failed",
                extra={"request_id": request.id, "reply_to": where, "error": error_text(exc)},
            )
            return False
        self.dead_letters_routed += 1
        log.warning("request_dead_lettered_routed", extra={"request_id": request.id, "reply_to": where})
        return True
