"""The worker loop: receive a batch, fetch its inputs, recognize it in a thread, store, respond, delete.

At-least-once: a request message is deleted only after its result object is stored and its response
sent, so a worker that dies at any point leaves its messages to be redelivered to another worker. Results
are keyed by request id, so a redelivered request produces the same object and response again.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeGuard

from facerec import people
from facerec.logs import error_text
from facerec.messages import ErrorCode
from facerec.people import EmbeddingRecord
from facerec.ports import BlobNotFound, DataTier, MessageQueue, PortError, QueueNotFound, ReceivedMessage
from facerec.recognition.results import (
    BatchRecognizer,
    Enroller,
    EnrollOutcome,
    Outcome,
    Verifier,
    VerifyOutcome,
    Wanted,
)
from facerec.settings import Settings
from facerec.worker.batch import (
    Answer,
    Discard,
    Job,
    enrollment_answer,
    failed_answer,
    missing_input_answer,
    outcome_answer,
    reply_to,
    triage,
    verification_answer,
    verify_input,
    wanted,
)
from facerec.worker.gallery_sync import GallerySync
from facerec.worker.stats import WorkerStats
from facerec.worker.threads import InferenceRunner, run_in_daemon_thread
from facerec.worker.visibility import InHand

log = logging.getLogger(__name__)

RECEIVE_MAX = 10
_NOT_KEPT = {
    people.DEADLINE_EXCEEDED: (ErrorCode.DEADLINE_EXCEEDED, "request expired before its record was written"),
    people.PERSON_DELETED: (ErrorCode.PERSON_DELETED, "the person was deleted while the photo was being enrolled"),
    people.PHOTO_DELETED: (ErrorCode.INPUT_MISSING, "the photo was discarded before its record was written"),
}
PORT_ERROR_BACKOFF_S = (0.2, 5.0)
REPLY_CACHE_MAX = 256
"""Reply queue handles (and names known to be gone) kept at most: one per web process start, so a worker that
outlives many restarts forgets the old ones rather than growing without bound."""


@dataclass
class _Batch:
    """Jobs whose inputs are fetched, ready for inference, with the time each stage took so far."""

    jobs: list[Job] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)
    seconds: list[bytes | None] = field(default_factory=list)
    """The second photo of each `verify` job (None for the other jobs)."""
    timings: dict[str, float] = field(default_factory=dict)


class Worker:
    """One app-tier worker on a DataTier and a BatchRecognizer. `await worker.run(stop)` until `stop` is set."""

    def __init__(
        self,
        data: DataTier,
        recognizer: BatchRecognizer,
        settings: Settings,
        name: str = "worker",
        stats: WorkerStats | None = None,
        infer: InferenceRunner = run_in_daemon_thread,
    ) -> None:
        self.data = data
        self._infer = infer
        self.recognizer = recognizer
        self.settings = settings
        self.name = name
        self.stats = stats or WorkerStats()
        self.in_hand = InHand(
            data.requests, settings.visibility_timeout_s, self.stats, extend_after=settings.visibility_extend_after
        )
        self._enroller: Enroller | None = recognizer if _can_enroll(recognizer) else None
        self._takes_wanted = _takes_wanted(recognizer)
        self.gallery_sync = (
            GallerySync(data.gallery, self._enroller, settings.gallery_refresh_s)
            if data.gallery is not None and self._enroller is not None
            else None
        )
        self._reply_queues: dict[str, MessageQueue] = {}
        self._gone: set[str] = set()

    # --- main loop --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Process batches until `stop` is set; then finish the batch in inference and release the rest.

        Cancelling the task releases every held message at once (visibility 0) instead.
        """
        keeper = asyncio.create_task(self.in_hand.run(), name="facerec-visibility")
        syncer = (
            asyncio.create_task(self.gallery_sync.run(stop), name="facerec-gallery-sync")
            if self.gallery_sync is not None
            else None
        )
        pending: asyncio.Task[_Batch | None] | None = None
        backoff = PORT_ERROR_BACKOFF_S[0]
        log.info("worker_started", extra={"worker": self.name, "batch_max": self.settings.batch_max})
        try:
            # After a stop, a prefetch in flight is still awaited (and its batch processed): abandoning it
            # would release what it received and spend a delivery of each message.
            while not stop.is_set() or pending is not None:
                try:
                    current = await (pending or self._next_batch(stop))
                    pending = None
                    if current is None:
                        continue
                    if self.settings.worker_prefetch and not stop.is_set():
                        # Overlap: receive and fetch the next batch while this one is in inference.
                        pending = asyncio.create_task(self._next_batch(stop), name="facerec-prefetch")
                    await self._process(current)
                    backoff = PORT_ERROR_BACKOFF_S[0]
                except PortError as exc:
                    # The queue or store is unavailable: unsettled messages come back after their timeout.
                    log.warning(
                        "port_error", extra={"worker": self.name, "error": error_text(exc), "backoff_s": backoff}
                    )
                    if pending is not None:
                        pending.cancel()
                        with contextlib.suppress(asyncio.CancelledError, PortError):
                            await pending
                        pending = None
                    # Stop extending what this attempt held: it all comes back after its timeout.
                    self.in_hand.discard(self.in_hand.receipts())
                    await _sleep_or_stop(stop, backoff)
                    backoff = min(backoff * 2, PORT_ERROR_BACKOFF_S[1])
        finally:
            for task in (pending, keeper, syncer):
                if task is not None:
                    task.cancel()
                    try:
                        await task
                    except asyncio.CancelledError:
                        pass
                    except Exception:
                        # Already failed before the stop: its messages are released just below.
                        log.exception("background_task_failed", extra={"worker": self.name, "task": task.get_name()})
            released = await self.in_hand.release_all()
            log.info("worker_stopped", extra={"worker": self.name, "released": released, **self.stats.snapshot()})

    # --- stage 1: receive, triage, fetch ----------------------------------------------------------

    async def _receive(self, stop: asyncio.Event) -> list[ReceivedMessage]:
        """Up to `batch_max` messages: one long poll for the first, then a bounded wait to fill the batch."""
        queue, batch_max = self.data.requests, self.settings.batch_max
        timeout = self.settings.visibility_timeout_s
        wait_s = self.settings.worker_poll_wait_s
        if not queue.receive_cancel_safe:
            wait_s = min(wait_s, self.settings.worker_poll_slice_s)
        first = asyncio.ensure_future(queue.receive(min(RECEIVE_MAX, batch_max), wait_s, timeout))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({first, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not first.done() and queue.receive_cancel_safe:
            # Stopping while idle: this queue takes back whatever the cancelled receive claimed.
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first
            return []
        # Otherwise (SQS) the short poll in flight ends on its own; what it got is processed, not abandoned.
        messages = await first
        self.in_hand.add(m.receipt for m in messages)
        fill_until = time.monotonic() + self.settings.batch_fill_wait_ms / 1000
        while messages and len(messages) < batch_max and not stop.is_set():
            remaining = fill_until - time.monotonic()
            if remaining <= 0:
                break
            more = await queue.receive(min(RECEIVE_MAX, batch_max - len(messages)), remaining, timeout)
            if not more:
                break
            self.in_hand.add(m.receipt for m in more)
            messages.extend(more)
        return messages

    async def _next_batch(self, stop: asyncio.Event) -> _Batch | None:
        started = time.monotonic()
        messages = await self._receive(stop)
        if not messages:
            return None
        received = time.monotonic()
        now = time.time()
        batch = _Batch()
        settled: list[Answer | Discard] = []
        for message in messages:
            sorted_out = triage(message, now, self.name)
            if isinstance(sorted_out, Job):
                batch.jobs.append(sorted_out)
            else:
                settled.append(sorted_out)
        fetched = await asyncio.gather(*(self._fetch(job) for job in batch.jobs), return_exceptions=True)
        jobs, batch.jobs = batch.jobs, []
        for job, data in zip(jobs, fetched, strict=True):
            if isinstance(data, BlobNotFound):
                settled.append(missing_input_answer(job, self.name))
            elif isinstance(data, BaseException):
                raise data
            else:
                batch.jobs.append(job)
                batch.images.append(data[0])
                batch.seconds.append(data[1])
        batch.timings = {"receive_s": received - started, "fetch_s": time.monotonic() - received}
        if settled:
            # Bad input is answered at once, never held back behind the batch's inference.
            await self._settle(settled)
            log.info(
                "requests_rejected",
                extra={"worker": self.name, "count": len(settled), **self.stats.snapshot()},
            )
        return batch

    async def _fetch(self, job: Job) -> tuple[bytes, bytes | None]:
        """The job's photo, and the second photo of a verification between two."""
        request = job.request
        if request.kind == "verify" and request.input_key2 is not None:
            first, second = await asyncio.gather(
                self.data.inputs.get(request.input_key), self.data.inputs.get(request.input_key2)
            )
            return first, second
        if request.kind != "enroll":
            return await self.data.inputs.get(request.input_key), None
        if self.data.gallery is None:
            raise BlobNotFound(request.input_key)  # answered as input_missing: this deployment cannot enroll
        return await self.data.gallery.get(request.input_key), None

    # --- stage 2: inference -----------------------------------------------------------------------

    def _suspect(self, job: Job) -> bool:
        # A redelivered message may have crashed the worker that held it: never let it take a batch down again.
        return job.message.receive_count > 1

    def _last_chance(self, job: Job) -> bool:
        return job.message.receive_count >= self.settings.max_receives

    async def _recognize(self, images: Sequence[bytes], wishes: Sequence[Wanted]) -> list[Outcome]:
        recognizer = self.recognizer
        if self._takes_wanted:
            call: Callable[[Sequence[bytes], Sequence[Wanted]], list[Outcome]] = getattr(  # noqa: B009
                recognizer, "recognize"
            )  # the protocol's signature lacks `wanted`
            outcomes = await self._infer(lambda: call(images, wishes))
        else:
            # A recognizer written before candidates and every face: its answers simply lack them.
            outcomes = await self._infer(lambda: recognizer.recognize(images))
        if len(outcomes) != len(images):
            raise RuntimeError(f"recognizer returned {len(outcomes)} outcomes for {len(images)} images")
        return outcomes

    @staticmethod
    def _fetch_share(batch: _Batch) -> float:
        """One job's share of the time its batch spent fetching the input objects."""
        return batch.timings.get("fetch_s", 0.0) / max(1, len(batch.jobs))

    def _stage_shares(self, fetch_share: float, recognized: int) -> dict[str, float]:
        """Per image: the batch's fetch time shared by its jobs, and the stage seconds the recognizer reported
        for its latest call (`last_stages`, optional: a recognizer without it reports `fetch` alone) shared by
        the images of that call. Read right after the call: inference runs one call at a time."""
        shares = {"fetch": fetch_share}
        reported = getattr(self.recognizer, "last_stages", None)
        if isinstance(reported, dict):
            for stage, seconds in reported.items():
                if isinstance(stage, str) and isinstance(seconds, int | float):
                    shares[stage] = seconds / max(1, recognized)
        return {stage: round(seconds, 6) for stage, seconds in shares.items()}

    async def _recognize_alone(self, job: Job, image: bytes, fetch_share: float) -> Answer | None:
        """One image on its own; a failure is answered on the last delivery, else retried by redelivery."""
        started = time.monotonic()
        try:
            (outcome,) = await self._recognize([image], [wanted(job.request)])
        except Exception as exc:
            log.exception(
                "recognize_failed",
                extra={"worker": self.name, "request_id": job.request.id, "receive_count": job.message.receive_count},
            )
            if self._last_chance(job):
                return failed_answer(job, f"recognition failed: {type(exc).__name__}", self.name)
            await self.data.requests.change_visibility([job.message.receipt], 0)
            self.in_hand.discard([job.message.receipt])
            self.stats.released += 1
            return None
        return outcome_answer(job, outcome, time.monotonic() - started, self.name, self._stage_shares(fetch_share, 1))

    async def _enroll(self, pairs: Sequence[tuple[Job, bytes]], timings: dict[str, float]) -> None:
        """Embed photos for the gallery store (rare and small: one inference call for all of them)."""
        started = time.monotonic()
        try:
            enroller = self._enroller
            if enroller is None or self.data.gallery is None:
                raise RuntimeError("this worker cannot enroll (no gallery store, or a recognizer without enroll)")
            images = [image for _, image in pairs]
            outcomes: list[EnrollOutcome] = await self._infer(lambda: enroller.enroll(images))
            fields = enroller.embedding_fields()
        except Exception as exc:
            log.exception("enroll_failed", extra={"worker": self.name, "size": len(pairs)})
            answers = [failed_answer(job, f"enrollment failed: {type(exc).__name__}", self.name) for job, _ in pairs]
        else:
            inference_s = time.monotonic() - started
            answers = [
                enrollment_answer(job, outcome, inference_s, self.name, fields)
                for (job, _), outcome in zip(pairs, outcomes, strict=True)
            ]
        timings["infer_s"] += time.monotonic() - started
        t0 = time.monotonic()
        answers = list(
            await asyncio.gather(*(self._commit(job, answer) for (job, _), answer in zip(pairs, answers, strict=True)))
        )
        written = sum(1 for answer in answers if answer.output is not None)
        timings["store_s"] += time.monotonic() - t0
        # The records are in the store already: settling only sends the responses and deletes the messages.
        _accumulate(timings, await self._settle([replace(answer, output=None) for answer in answers]))
        if self.gallery_sync is not None and written:
            with contextlib.suppress(PortError):
                await self.gallery_sync.refresh()  # this worker knows the new person at once

    async def _commit(self, job: Job, answer: Answer) -> Answer:
        """Write an enrollment's record if its request is still awaited and its person not deleted since it was
        sent (`people.commit_enrollment`); otherwise an error answer (the web tier may no longer wait for it)."""
        if answer.output is None:
            return answer
        if self.data.gallery is None:  # pragma: no cover - _enroll refuses to enroll without a gallery store
            return failed_answer(job, "this worker has no gallery store", self.name)
        key, body = answer.output
        record = EmbeddingRecord.model_validate_json(body)
        refused = await people.commit_enrollment(
            self.data.gallery, job.request.input_key, key, record, job.request.deadline
        )
        if refused is None:
            return answer
        log.info("enrollment_not_kept", extra={"worker": self.name, "request_id": job.request.id, "reason": refused})
        code, text = _NOT_KEPT[refused]
        return failed_answer(job, text, self.name, code)

    async def _verify(self, jobs: Sequence[tuple[Job, bytes, bytes | None]], timings: dict[str, float]) -> None:
        """Compare faces (rare and small, like enrollments: one inference call for all of them)."""
        started = time.monotonic()
        try:
            verifier = self.recognizer
            if not _can_verify(verifier):
                raise RuntimeError("this worker cannot verify (a recognizer without verify)")
            inputs = [verify_input(job.request, first, second) for job, first, second in jobs]
            outcomes: list[VerifyOutcome] = await self._infer(lambda: verifier.verify(inputs))
        except Exception as exc:
            log.exception("verify_failed", extra={"worker": self.name, "size": len(jobs)})
            answers = [failed_answer(job, f"verification failed: {type(exc).__name__}", self.name) for job, *_ in jobs]
        else:
            inference_s = time.monotonic() - started
            answers = [
                verification_answer(job, outcome, inference_s, self.name)
                for (job, *_), outcome in zip(jobs, outcomes, strict=True)
            ]
        timings["infer_s"] += time.monotonic() - started
        _accumulate(timings, await self._settle(answers))

    async def _process(self, batch: _Batch) -> None:
        if not batch.jobs:
            return
        timings = {**batch.timings, "infer_s": 0.0, "store_s": 0.0, "respond_s": 0.0, "delete_s": 0.0}
        triples = list(zip(batch.jobs, batch.images, batch.seconds, strict=True))
        verifications = [triple for triple in triples if triple[0].request.kind == "verify"]
        if verifications:
            await self._verify(verifications, timings)
        pairs = [(job, image) for job, image, _ in triples if job.request.kind != "verify"]
        enrollments = [(job, image) for job, image in pairs if job.request.kind == "enroll"]
        if enrollments:
            await self._enroll(enrollments, timings)
            pairs = [(job, image) for job, image in pairs if job.request.kind != "enroll"]
        together = [(job, image) for job, image in pairs if not self._suspect(job)]
        # The most-redelivered (most suspect) last: the others are settled before it can crash the process.
        alone = sorted(
            ((job, image) for job, image in pairs if self._suspect(job)), key=lambda pair: pair[0].message.receive_count
        )
        if together:
            started = time.monotonic()
            try:
                outcomes = await self._recognize(
                    [image for _, image in together], [wanted(job.request) for job, _ in together]
                )
            except Exception:
                log.exception("batch_failed", extra={"worker": self.name, "size": len(together)})
                alone = together + alone
            else:
                inference_s = time.monotonic() - started
                timings["infer_s"] += inference_s
                stages = self._stage_shares(self._fetch_share(batch), len(together))
                answers = [
                    outcome_answer(job, outcome, inference_s, self.name, stages)
                    for (job, _), outcome in zip(together, outcomes, strict=True)
                ]
                _accumulate(timings, await self._settle(answers))
        for job, image in alone:
            started = time.monotonic()
            answer = await self._recognize_alone(job, image, self._fetch_share(batch))
            timings["infer_s"] += time.monotonic() - started
            if answer is not None:
                # Settled one by one: if the next one kills the process, this answer is already out.
                _accumulate(timings, await self._settle([answer]))
        self.stats.batches += 1
        log.info(
            "batch_done",
            extra={
                "worker": self.name,
                "size": len(batch.jobs),
                "isolated": len(alone),
                **{stage: round(seconds, 4) for stage, seconds in timings.items()},
                **self.stats.snapshot(),
            },
        )

    # --- stage 3: store, respond, delete ----------------------------------------------------------

    async def _settle(self, settled: Sequence[Answer | Discard]) -> dict[str, float]:
        """Store results, send responses, and only then delete the request messages."""
        answers = [item for item in settled if isinstance(item, Answer)]
        t0 = time.monotonic()
        await asyncio.gather(*(self._store_output(answer) for answer in answers if answer.output is not None))
        t1 = time.monotonic()
        if answers:
            await self._respond(answers)
        t2 = time.monotonic()
        for item in settled:
            if isinstance(item, Discard):
                log.warning(
                    "message_discarded",
                    extra={"worker": self.name, "message_id": item.message.message_id, "reason": item.reason},
                )
        receipts = [item.message.receipt for item in settled]
        await self.data.requests.delete_batch(receipts)
        self.in_hand.discard(receipts)
        t3 = time.monotonic()
        errors = sum(1 for a in answers if a.is_error)
        self.stats.errors += errors
        self.stats.processed += len(answers) - errors
        self.stats.discarded += len(settled) - len(answers)
        return {"store_s": t1 - t0, "respond_s": t2 - t1, "delete_s": t3 - t2}

    async def _respond(self, answers: Sequence[Answer]) -> None:
        """Send each answer to the queue its request names (one `send_batch` per queue): the web process that
        waits for it reads that queue. Raises PortError when a queue fails (the requests come back later)."""
        groups: dict[str, list[str]] = {}
        for answer in answers:
            groups.setdefault(self._destination(answer), []).append(answer.response.to_json())
        if len(groups) == 1:  # the usual batch: every answer for one web process, as before reply queues
            [(name, bodies)] = groups.items()
            await self._send(name, bodies)
            return
        sent = await asyncio.gather(
            *(self._send(name, bodies) for name, bodies in groups.items()), return_exceptions=True
        )
        for outcome in sent:
            if isinstance(outcome, BaseException):
                raise outcome

    def _destination(self, answer: Answer) -> str:
        """The request's `reply_to` when it names a response queue of this deployment, else the fixed one: a
        worker never sends to a queue a message merely names (another deployment's, or its own request queue)."""
        fixed = self.settings.resp_queue
        name = reply_to(answer.message)
        if name is None or name == fixed:
            return fixed
        if self.settings.is_reply_queue(name) and self.data.replies is not None:
            return name
        log.warning(
            "reply_to_refused",
            extra={
                "worker": self.name,
                "request_id": answer.response.id,
                "reply_to": name[:80],
                "reason": "no reply queues here" if self.settings.is_reply_queue(name) else "not a response queue",
            },
        )
        return fixed

    async def _send(self, name: str, bodies: list[str]) -> None:
        if name == self.settings.resp_queue:
            await self.data.responses.send_batch(bodies)
            return
        assert self.data.replies is not None  # `_destination` names a reply queue only when there are some
        try:
            queue = self._reply_queues.get(name)
            if queue is None:
                queue = await self.data.replies.open(name)
                if len(self._reply_queues) >= REPLY_CACHE_MAX:
                    self._reply_queues.clear()
                self._reply_queues[name] = queue
            await queue.send_batch(bodies)
        except QueueNotFound:
            # Deleted with its web process (a clean stop, or reaped after it died): nobody waits for these
            # answers any more, so the requests are acknowledged rather than redelivered to no one.
            self._reply_queues.pop(name, None)
            if name not in self._gone:
                if len(self._gone) >= REPLY_CACHE_MAX:
                    self._gone.clear()
                self._gone.add(name)
                log.warning("reply_queue_gone", extra={"worker": self.name, "reply_to": name, "answers": len(bodies)})
            self.stats.unanswered += len(bodies)

    async def _store_output(self, answer: Answer) -> None:
        assert answer.output is not None
        key, body = answer.output
        if answer.output_store == "gallery":
            assert self.data.gallery is not None  # an enrollment is only answered with a record when there is one
            await self.data.gallery.put(key, body.encode("utf-8"), "application/json")
        else:
            await self.data.outputs.put(key, body.encode("utf-8"), "text/plain; charset=utf-8")


def _can_enroll(recognizer: BatchRecognizer) -> TypeGuard[Enroller]:
    """A recognizer that can enroll too: it has all of Enroller's methods."""
    return all(hasattr(recognizer, name) for name in ("enroll", "embedding_fields", "use_enrolled"))


def _takes_wanted(recognizer: BatchRecognizer) -> bool:
    """Whether `recognize` accepts `wanted` (candidates, every face): see BatchRecognizer."""
    try:
        return "wanted" in inspect.signature(recognizer.recognize).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin or an odd callable)
        return False


def _can_verify(recognizer: BatchRecognizer) -> TypeGuard[Verifier]:
    return hasattr(recognizer, "verify")


def _accumulate(timings: dict[str, float], more: dict[str, float]) -> None:
    for stage, seconds in more.items():
        timings[stage] = timings.get(stage, 0.0) + seconds


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
