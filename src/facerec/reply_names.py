"""The names of a deployment's per-process reply queues, as every ReplyQueues adapter checks and lists them.

`Settings.reply_queue(web_id)` makes them (`<prefix>-resp-<web id>`); the fixed `<prefix>-resp-queue` is not
one of them (it is `DataTier.responses`, created by set-up, never by a web process). Imports nothing of facerec:
settings use it too."""

from __future__ import annotations

import re

WEB_ID_PATTERN = "[0-9a-f]{12}"
"""A web process's id (random per start): names its reply queue `<prefix>-resp-<web id>`."""


def is_web_id(text: str) -> bool:
    return re.fullmatch(WEB_ID_PATTERN, text) is not None


def is_process_reply_queue(prefix: str, name: str) -> bool:
    """Whether `name` is `<prefix>-resp-<web id>`: a per-process reply queue of deployment `prefix` (not the
    fixed `<prefix>-resp-queue`, nor a queue of another prefix that happens to start with this one)."""
    return re.fullmatch(rf"{re.escape(prefix)}-resp-{WEB_ID_PATTERN}", name) is not None


def check_reply_queue_name(prefix: str, name: str) -> None:
    """Raise ValueError unless `name` is a per-process reply queue of `prefix` (adapters create no other)."""
    if not is_process_reply_queue(prefix, name):
        raise ValueError(f"{name!r} is not a reply queue name of the form {prefix}-resp-<12 hex digits>")
