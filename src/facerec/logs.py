"""Structured (JSON lines) logging for every facerec process.

Call sites log an event name plus fields: `log.info("batch_done", extra={"size": 8, "detect_s": 0.2})`.
Never pass credentials or image bytes as fields; bytes values are refused by the formatter.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# `color_message` is uvicorn's copy of its message with ANSI colour codes: noise in a JSON log.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({})).keys()) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _STANDARD_ATTRS or key.startswith("_"):
                continue
            payload[key] = _safe(value)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


def _safe(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    return value


def configure_logging(level: str | int = "INFO", stream: Any = None) -> None:
    """Idempotent: replaces the root handlers with one JSON handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.Formatter.converter = time.gmtime


def error_text(exc: BaseException, limit: int = 300) -> str:
    """An exception for a log field: its type and message (`TimeoutError: ` when the message is empty, as
    asyncio's timeouts and some botocore errors have none), clipped."""
    message = str(exc).strip()
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text[:limit]
