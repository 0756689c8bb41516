"""One recognition round trip: store the image, send the request, await its future; every failure becomes
a ServiceError with the status the client should see."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive

from facerec import keys, people
from facerec.logs import error_text
from facerec.messages import ErrorCode, RecognitionRequest, RecognitionResponse
from facerec.ports import BlobStore, DataTier, MessageTooLarge, PortError
from facerec.settings import Settings
from facerec.web.errors import ServiceError
from facerec.web.pending import PendingRequests
from facerec.web.response_poller import DeadLettered
from facerec.web.uploads import Upload

log = logging.getLogger(__name__)

RETRY_AFTER_S = "1"
_EXTENSIONS = {
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
    "image/gif": ".gif",
    "image/tiff": ".tif",
}

# Worker error code -> (HTTP status, what the client is told).
_WORKER_ERRORS: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.NOT_AN_IMAGE: (415, "the image could not be decoded"),
    ErrorCode.IMAGE_TOO_LARGE: (413, "the image has too many pixels"),
    ErrorCode.INPUT_MISSING: (502, "the worker could not find the stored image"),
    ErrorCode.PROCESSING_FAILED: (502, "processing failed"),
    ErrorCode.DEAD_LETTERED: (502, "processing failed repeatedly"),
    ErrorCode.DEADLINE_EXCEEDED: (504, "the request was not processed before its deadline"),
    ErrorCode.PERSON_DELETED: (409, "the person was deleted while the photo was being enrolled"),
    ErrorCode.NO_FACE: (422, "no face found"),
    ErrorCode.UNKNOWN_PERSON: (404, "unknown person"),
}
# Errors whose worker message is the client's answer: it names the photo without a face, or the person.
_WORKER_WORDS = {ErrorCode.NO_FACE, ErrorCode.UNKNOWN_PERSON}


@dataclass(frozen=True, slots=True)
class Answer:
    request_id: str
    stem: str
    response: RecognitionResponse
    total_s: float


class ClientDisconnected(ServiceError):
    """The client went away while its request was being processed (nobody reads the 499 answer)."""

    def __init__(self, request_id: str) -> None:
        super().__init__(499, "client_closed_request", f"client disconnected from request {request_id}")


class RecognitionGateway:
    def __init__(
        self, data: DataTier, pending: PendingRequests, settings: Settings, *, reply_to: str | None = None
    ) -> None:
        """`reply_to`: the per-process reply queue this process reads its answers from, stamped on every request
        it sends; None (one web process, or the one holding the fixed queue): the fixed response queue, and the
        messages are byte for byte what they were before there were reply queues."""
        self._data = data
        self._pending = pending
        self._settings = settings
        self.reply_to = reply_to
        self.accepting = True

    async def recognize(
        self,
        upload: Upload,
        receive: Receive | None = None,
        request_id: str | None = None,
        *,
        top_k: int | None = None,
        all_faces: bool = False,
    ) -> Answer:
        """`receive` is the request's ASGI receive (body already read): its `http.disconnect` ends the wait.
        `request_id` is the HTTP request's id (new if not given), so the access log line names this recognition.
        `top_k`: candidates per face; `all_faces`: report every face, not only the subject's."""
        started = time.perf_counter()
        self.admit()
        request_id = request_id or keys.new_request_id()
        # Registered before anything is sent so that even an instant answer finds its future.
        future = self._pending.register(request_id)
        try:
            message = await self._submit(upload, request_id, top_k=top_k, all_faces=all_faces or None)
            assert message.deadline is not None
            response = await self._await_answer(request_id, future, receive, message.deadline - time.time())
        finally:
            self._pending.discard(request_id)
        _raise_worker_error(request_id, response)
        if response.result is None:
            raise ServiceError(502, ErrorCode.PROCESSING_FAILED, "the worker sent an empty answer")
        return Answer(request_id, keys.display_stem(upload.filename), response, time.perf_counter() - started)

    async def verify(
        self,
        image1: Upload,
        image2: Upload | None = None,
        person: str | None = None,
        receive: Receive | None = None,
        request_id: str | None = None,
    ) -> Answer:
        """Two photos, or a photo and an enrolled person: stored in the image store like recognition inputs
        (and kept like them), then one `verify` request. A photo stored for a request that was never sent is
        deleted again."""
        started = time.perf_counter()
        self.admit()
        request_id = request_id or keys.new_request_id()
        now = time.time()
        message = RecognitionRequest(
            id=request_id,
            input_key=keys.input_key(image1.filename, request_id),
            input_key2=None if image2 is None else keys.input_key(image2.filename, request_id, part=2),
            output_key=keys.output_key(image1.filename, request_id),
            filename=image1.filename,
            enqueued_at=now,
            deadline=now + self._settings.request_deadline_s,
            reply_to=self.reply_to,
            kind="verify",
            person=None if image2 is not None else person,
        )
        future = self._pending.register(request_id)
        try:
            if image2 is not None:
                assert message.input_key2 is not None
                await self._store(self._data.inputs, "image store", image2, message.input_key2)
            try:
                await self._store_and_send(self._data.inputs, "image store", image1, message)
            except ServiceError:
                if message.input_key2 is not None:
                    with contextlib.suppress(Exception):  # no request will name it: not left behind
                        await self._data.inputs.delete(message.input_key2)
                raise
            assert message.deadline is not None
            response = await self._await_answer(request_id, future, receive, message.deadline - time.time())
        finally:
            self._pending.discard(request_id)
        _raise_worker_error(request_id, response)
        if response.verification is None:
            raise ServiceError(502, ErrorCode.PROCESSING_FAILED, "the worker sent an empty answer")
        return Answer(request_id, keys.display_stem(image1.filename), response, time.perf_counter() - started)

    async def enroll_photo(self, person: str, upload: Upload, generation: str | None = None) -> RecognitionResponse:
        """Store a photo in the gallery store and have a worker embed it. The worker's answer: a result naming
        the person, or an error (e.g. `not_one_face`). `generation`: the person's current generation
        (`people.current_generation`), which the worker's record must still match to be kept.

        Whatever this reports as rejected is deleted from the store before it returns: a worker error, a 502
        or 504, a failed store or send all delete the photo and then any record of it (a worker that writes
        the record later finds the photo gone and removes its record: see `facerec.people`)."""
        gallery = self._data.gallery
        if gallery is None:
            raise ServiceError(501, "not_supported", "this deployment has no gallery store")
        request_id = keys.new_request_id()
        future = self._pending.register(request_id)
        now = time.time()
        message = RecognitionRequest(
            id=request_id,
            input_key=people.photo_key(person, request_id, _EXTENSIONS.get(upload.content_type, "")),
            output_key=people.embedding_key(person, request_id),
            filename=upload.filename,
            enqueued_at=now,
            deadline=now + self._settings.request_deadline_s,
            reply_to=self.reply_to,
            kind="enroll",
            person=person,
            generation=generation,
        )
        try:
            await self._store_and_send(gallery, "gallery store", upload, message)
            assert message.deadline is not None
            response = await self._await_answer(request_id, future, None, message.deadline - time.time())
        except Exception:
            await _discard(gallery, message)
            raise
        finally:
            self._pending.discard(request_id)
        if response.error is not None or response.result is None:
            await _discard(gallery, message)
        return response

    def admit(self) -> None:
        """Raise 503 when shutting down or over `max_in_flight` (cheap: call it before reading the upload)."""
        if not self.accepting:
            raise ServiceError(503, "shutting_down", "the service is shutting down", {"Retry-After": RETRY_AFTER_S})
        if self._pending.in_flight >= self._settings.max_in_flight:
            raise ServiceError(
                503,
                "overloaded",
                f"too many requests in flight (limit {self._settings.max_in_flight}); retry shortly",
                {"Retry-After": RETRY_AFTER_S},
            )

    async def _submit(
        self, upload: Upload, request_id: str, top_k: int | None = None, all_faces: bool | None = None
    ) -> RecognitionRequest:
        now = time.time()
        message = RecognitionRequest(
            id=request_id,
            input_key=keys.input_key(upload.filename, request_id),
            output_key=keys.output_key(upload.filename, request_id),
            filename=upload.filename,
            enqueued_at=now,
            deadline=now + self._settings.request_deadline_s,
            reply_to=self.reply_to,
            top_k=top_k,
            all_faces=all_faces,
        )
        await self._store_and_send(self._data.inputs, "image store", upload, message)
        return message

    async def _store_and_send(
        self, store: BlobStore, store_label: str, upload: Upload, message: RecognitionRequest
    ) -> None:
        """Check that the message fits the queue, put the image under `message.input_key`, then send the message;
        413 when the request's text cannot be queued, 503 naming whichever store or queue failed."""
        try:
            body = message.to_json()
        except ValueError:  # the field limits should make this unreachable: a 4xx, with nothing stored, if not
            raise _unqueueable() from None
        await self._store(store, store_label, upload, message.input_key)
        try:
            await self._data.requests.send(body)
        except (PortError, MessageTooLarge) as exc:
            with contextlib.suppress(Exception):  # nobody will process it; do not leave an orphan input
                await store.delete(message.input_key)
            if isinstance(exc, MessageTooLarge):
                raise _unqueueable() from None
            raise _unavailable("request queue", exc) from None

    @staticmethod
    async def _store(store: BlobStore, store_label: str, upload: Upload, key: str) -> None:
        try:
            await store.put(key, upload.data, upload.content_type)
        except PortError as exc:
            with contextlib.suppress(Exception):  # a put that failed late may still have stored the object
                await store.delete(key)
            raise _unavailable(store_label, exc) from None
        upload.release()

    async def _await_answer(
        self,
        request_id: str,
        future: asyncio.Future[RecognitionResponse],
        receive: Receive | None,
        timeout_s: float,
    ) -> RecognitionResponse:
        watchers: set[asyncio.Future[Any]] = {future}
        disconnect = asyncio.create_task(_wait_for_disconnect(receive)) if receive is not None else None
        if disconnect is not None:
            watchers.add(disconnect)
        try:
            await asyncio.wait(watchers, timeout=max(0.0, timeout_s), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if disconnect is not None:
                disconnect.cancel()
        if future.done():
            try:
                return future.result()
            except DeadLettered:
                raise ServiceError(502, ErrorCode.DEAD_LETTERED, "processing failed repeatedly") from None
        if disconnect is not None and disconnect.done() and not disconnect.cancelled():
            log.info("client_disconnected", extra={"request_id": request_id})
            raise ClientDisconnected(request_id)
        log.warning("request_deadline_exceeded", extra={"request_id": request_id})
        raise ServiceError(
            504,
            ErrorCode.DEADLINE_EXCEEDED,
            f"no answer within {self._settings.request_deadline_s:g} s; the workers may be busy or starting",
        )


async def _wait_for_disconnect(receive: Receive) -> None:
    """Returns when the client disconnects; if the server cannot tell us, keeps waiting (never a false alarm)."""
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
    except Exception as exc:
        log.debug("disconnect_watch_unavailable", extra={"error": error_text(exc)})
    await asyncio.Event().wait()


async def _discard(gallery: BlobStore, message: RecognitionRequest) -> None:
    """Delete a rejected enrollment's photo and record; a store failure is logged (the photo stays orphaned,
    and its record, if a worker wrote one, is removed by that worker's own check only if the photo is gone)."""
    try:
        await people.discard_enrollment(gallery, message.input_key, message.output_key)
    except Exception as exc:
        log.warning("enrollment_discard_failed", extra={"request_id": message.id, "error": error_text(exc)})


def _unavailable(what: str, exc: PortError) -> ServiceError:
    # The backend's words (paths, ARNs, account ids) go to the log with the request id, not to the client.
    return ServiceError(
        503,
        "unavailable",
        f"{what} unavailable; retry shortly",
        {"Retry-After": RETRY_AFTER_S},
        detail=f"{what}: {error_text(exc)[:300]}",
    )


def _unqueueable() -> ServiceError:
    return ServiceError(
        413, "request_too_large", "the request's text (its filename or person name) is too long to queue; shorten it"
    )


def _raise_worker_error(request_id: str, response: RecognitionResponse) -> None:
    if response.error is not None:
        status, message = _WORKER_ERRORS.get(response.error.code, (502, "processing failed"))
        if response.error.code == ErrorCode.IMAGE_TOO_LARGE:
            # The worker's words carry the numbers: the image's pixels, the limit and the setting to change.
            message = f"{message}: {response.error.message}"
        elif response.error.code in _WORKER_WORDS:
            message = response.error.message
        log.info("worker_error", extra={"request_id": request_id, "code": str(response.error.code)})
        raise ServiceError(status, str(response.error.code), message)
