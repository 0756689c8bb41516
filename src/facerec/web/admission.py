"""Admission by bytes (ASGI middleware): the web tier holds at most `max_inflight_bytes` of request bodies.

A POST reserves its declared Content-Length (the whole body limit when it declares none) before its body is
read, and gives the reservation back as soon as its upload is stored (`Upload.release`) or the request ends.
A POST that does not fit gets 503 with Retry-After; its body is read and dropped chunk by chunk first, so the
client sees the answer rather than a connection reset in the middle of its upload. One request is always
admitted when nothing is held, so an upload within the size limit can never be refused for ever.

Memory bound: about twice the admitted bytes (the upload's bytes, plus a transient copy while the multipart
parser hands it over) on top of the process's own ~100 MB.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from facerec.web.access_log import request_id
from facerec.web.errors import error_response
from facerec.web.metrics import WebMetrics

log = logging.getLogger(__name__)

RESERVATION_KEY = "upload_reservation"
RETRY_AFTER_S = "1"


class ByteBudget:
    def __init__(self, limit: int, metrics: WebMetrics | None = None) -> None:
        self.limit = limit
        self.held = 0
        if metrics is not None:  # read when scraped, not updated per request
            metrics.upload_bytes_in_flight.set_function(lambda: self.held)

    def try_reserve(self, size: int) -> Reservation | None:
        if self.held and self.held + size > self.limit:
            return None
        self._change(size)
        return Reservation(self, size)

    def _change(self, delta: int) -> None:
        self.held += delta


class Reservation:
    def __init__(self, budget: ByteBudget, size: int) -> None:
        self._budget = budget
        self.remaining = size

    def release(self, size: int | None = None) -> None:
        """Give back `size` bytes (all that remain when None); never more than was reserved."""
        amount = self.remaining if size is None else min(size, self.remaining)
        self.remaining -= amount
        self._budget._change(-amount)


def reservation(scope: Scope) -> Reservation | None:
    """The reservation of the request in `scope`, if it has one."""
    found: Reservation | None = scope.get("state", {}).get(RESERVATION_KEY)
    return found


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length when it is a plain number (absent, chunked or malformed: None)."""
    declared = dict(scope["headers"]).get(b"content-length", b"")
    return int(declared) if declared.isdigit() else None


class InflightBytes:
    def __init__(self, app: ASGIApp, budget: ByteBudget, max_body_bytes: int) -> None:
        self.app = app
        self.budget = budget
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        size = self.max_body_bytes if declared is None else declared
        held = self.budget.try_reserve(min(size, self.max_body_bytes))
        if held is None:
            log.info("upload_refused_over_budget", extra={"declared": size, "held": self.budget.held})
            await _drain(receive)
            response = error_response(
                scope["path"],
                503,
                "overloaded",
                "too many upload bytes in flight; retry shortly (setting FACEREC_MAX_INFLIGHT_BYTES)",
                {"Retry-After": RETRY_AFTER_S},
                request_id(scope),
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})[RESERVATION_KEY] = held
        try:
            await self.app(scope, receive, send)
        finally:
            held.release()


async def _drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
