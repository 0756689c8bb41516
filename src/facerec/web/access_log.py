"""One JSON log line per HTTP request: method, path, status, duration and request id.

uvicorn's own access log is off (`facerec serve` passes `access_log=False`): it would log a second, unstructured
line per request. Neither the query string, the uploaded filename nor any body byte is logged.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facerec import keys

log = logging.getLogger("facerec.access")

REQUEST_ID_HEADER = b"x-request-id"


def request_id(scope: Scope) -> str:
    """The id of this HTTP request: a recognition uses it as its queue request id, so one id follows the request
    from the access log through the worker's logs to the JSON answer."""
    state = scope.setdefault("state", {})
    if "request_id" not in state:
        state["request_id"] = keys.new_request_id()
    return str(state["request_id"])


class AccessLog:
    """ASGI middleware, outermost: it sees every answer, including the size guard's early 413 and errors."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        identifier = request_id(scope)
        status = 500  # what the server answers when the app raises before starting a response

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER, identifier.encode())]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            log.info(
                "http_request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "request_id": identifier,
                },
            )
