"""Who may call a route: API keys (`Authorization: Bearer <key>`) checked against the hashes in the gallery store.

- Recognition is open unless `require_key=recognize`; then it needs a `recognize` or `manage` key.
- Management (enroll, delete) needs a `manage` key once one exists. Before that it is open on a loopback host
  that answers only loopback names (this machine only; the browser guard stops foreign pages) and refused with
  403 anywhere else (`is_exposed`), with the command that makes a key.
- Failed attempts are counted per client address; past `auth_failures_per_minute` the address gets 429 until
  its oldest failure is a minute old, so a key cannot be guessed by brute force (it is 256 random bits anyway).
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import time
from collections.abc import Callable

from fastapi import Request

from facerec import api_keys
from facerec.api_keys import KeyRecord, Role
from facerec.ports import BlobStore, PortError
from facerec.settings import Settings
from facerec.web.errors import ServiceError

log = logging.getLogger(__name__)

WINDOW_S = 60.0
CREATE_MANAGE_KEY = "facerec keys create --role manage"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_exposed(settings: Settings) -> bool:
    """Whether other machines can reach the service: it listens beyond loopback, or it is told to answer for
    other host names (a TLS proxy in front of a loopback listener forwards the world's requests)."""
    hosts = settings.allowed_hosts or []
    return not is_loopback(settings.host) or any(host == "*" or not is_loopback(host) for host in hosts)


class FailedAttempts:
    """Recent failed key attempts per client address (bounded: the oldest addresses are forgotten first)."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic, max_addresses: int = 10_000) -> None:
        self._limit = limit
        self._clock = clock
        self._max_addresses = max_addresses
        self._failures: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def _recent(self, address: str) -> collections.deque[float]:
        failures = self._failures.get(address)
        if failures is None:
            return collections.deque()
        horizon = self._clock() - WINDOW_S
        while failures and failures[0] <= horizon:
            failures.popleft()
        return failures

    def retry_after(self, address: str) -> float | None:
        """Seconds until `address` may try again, or None when it is not blocked."""
        failures = self._recent(address)
        if len(failures) < self._limit:
            return None
        return max(1.0, failures[0] + WINDOW_S - self._clock())

    def record(self, address: str) -> None:
        failures = self._recent(address)
        failures.append(self._clock())
        self._failures[address] = failures
        self._failures.move_to_end(address)
        while len(self._failures) > self._max_addresses:
            self._failures.popitem(last=False)


def _bearer(request: Request) -> str | None:
    """The key from the one Authorization header, None when there is none; 400 for several, 401 for another
    scheme."""
    values = request.headers.getlist("authorization")
    if len(values) > 1:
        raise ServiceError(400, "bad_authorization", "send one Authorization header, not several")
    if not values:
        return None
    scheme, _, key = values[0].strip().partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise _unauthorized("bad_authorization", "expected `Authorization: Bearer <key>`")
    return key.strip()


def _unauthorized(code: str, message: str) -> ServiceError:
    return ServiceError(401, code, message, {"WWW-Authenticate": "Bearer"})


def _store(request: Request) -> BlobStore | None:
    store: BlobStore | None = request.app.state.data.gallery  # Starlette's State holds untyped attributes
    return store


async def authorize(request: Request, needed: Role) -> KeyRecord | None:
    """Raise the 401/403/429 the request deserves for an action needing `needed`; the key's record when one
    was given (None when the action is open without a key)."""
    settings: Settings = request.app.state.settings
    attempts: FailedAttempts = request.app.state.failed_key_attempts
    address = request.client.host if request.client else "unknown"
    wait = attempts.retry_after(address)
    if wait is not None:
        request.app.state.metrics.auth_failures.labels("rate_limited").inc()
        raise ServiceError(
            429, "too_many_attempts", "too many failed API key attempts; retry later", {"Retry-After": f"{wait:.0f}"}
        )
    try:
        key = _bearer(request)
    except ServiceError as exc:
        _failed(request, address, "malformed")
        raise exc from None
    store = _store(request)
    try:
        if key is not None:
            record = None if store is None else await api_keys.verify_key(store, key)
            if record is None:
                _failed(request, address, "invalid")
                raise _unauthorized("invalid_key", "the API key is not valid (wrong, revoked or mistyped)")
            if not api_keys.grants(record, needed):
                raise ServiceError(403, "forbidden", f"this key's role is `{record.role}`; this needs a `{needed}` key")
            return record
        if needed == "recognize":
            if settings.require_key == "recognize":
                raise _unauthorized("key_required", "this server needs an API key: `Authorization: Bearer <key>`")
            return None
        if store is not None and await api_keys.has_role(store, "manage"):
            raise _unauthorized(
                "key_required", "managing people needs a `manage` API key: `Authorization: Bearer <key>`"
            )
    except PortError as exc:
        raise ServiceError(
            503, "unavailable", "the key store is unavailable; retry shortly", {"Retry-After": "1"}, detail=str(exc)
        ) from None
    if is_exposed(settings):
        raise ServiceError(
            403,
            "no_manage_key",
            "managing people is off on a server reachable from other machines until a `manage` key exists: "
            f"run `{CREATE_MANAGE_KEY}` on the server and send the key as `Authorization: Bearer <key>`",
        )
    return None


def _failed(request: Request, address: str, reason: str) -> None:
    request.app.state.failed_key_attempts.record(address)
    request.app.state.metrics.auth_failures.labels(reason).inc()
    log.info("api_key_rejected", extra={"client": address, "reason": reason})
