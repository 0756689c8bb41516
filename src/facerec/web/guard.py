"""The browser guard (ASGI middleware): other web pages cannot use this service through the user's browser.

- Host: only the configured host names (`allowed_hosts`; on loopback `localhost`, `127.0.0.1`, `::1`) are
  answered, so a DNS-rebinding page (its own name resolving to 127.0.0.1) gets 403 for every route.
- Origin / Sec-Fetch-Site on state-changing methods: same origin or none. A page on another origin can send a
  multipart POST without a CORS preflight (`mode: "no-cors"`), but browsers always label it, so it gets 403.
  Clients that are not browsers (curl, requests, the course's workload generator) send neither header and
  pass.
- Security headers on every answer (`nosniff`, no referrer) and framing refused on HTML ones.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facerec.settings import Settings
from facerec.web.auth import is_loopback
from facerec.web.errors import error_response

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_SITE_FETCHES = frozenset({"same-origin", "none"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """Lower-case host names answered, None for any."""
    hosts = settings.allowed_hosts
    if hosts is None:
        hosts = list(LOOPBACK_HOSTS) if is_loopback(settings.host) else ["*"]
    if "*" in hosts:
        return None
    return frozenset(host.strip().strip("[]").lower() for host in hosts)


def _split_host(value: str) -> tuple[str, int | None] | None:
    """(`name`, port) of a Host header value; None when it is not one."""
    try:
        parts = urlsplit(f"//{value}")
        return (parts.hostname or "").lower(), parts.port
    except ValueError:
        return None


def _same_origin(origin: str, host: str) -> bool:
    try:
        parts = urlsplit(origin)
        origin_port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return False
    split = _split_host(host)
    if split is None or not parts.hostname or parts.scheme not in _DEFAULT_PORTS:
        return False
    name, port = split
    # Behind a TLS proxy the Host may carry no port while the Origin says https: a default port matches.
    ports_match = port == origin_port if port is not None else origin_port in _DEFAULT_PORTS.values()
    return parts.hostname.lower() == name and ports_match


class BrowserGuard:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.hosts = allowed_hosts(settings)

    def _refusal(self, scope: Scope) -> tuple[str, str] | None:
        headers = Headers(scope=scope)
        host = headers.get("host")
        # No Host at all: an HTTP/1.0 client or a test harness, never a browser (whose requests always name one).
        if self.hosts is not None and host is not None:
            split = _split_host(host)
            if split is None or split[0] not in self.hosts:
                return "host_not_allowed", (
                    "this server does not answer for that Host name (setting FACEREC_ALLOWED_HOSTS)"
                )
        if scope["method"] in SAFE_METHODS:
            return None
        fetch_site = headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site.lower() not in SAME_SITE_FETCHES:
            return "cross_origin", "requests from other web sites are refused"
        origins = headers.getlist("origin")
        if origins and (len(origins) > 1 or host is None or not _same_origin(origins[0], host)):
            return "cross_origin", "requests from other web sites are refused"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _with_security_headers(list(message.get("headers", [])))
            await send(message)

        refusal = self._refusal(scope)
        if refusal is not None:
            code, reason = refusal
            response = error_response(scope["path"], 403, code, reason)
            await response(scope, receive, guarded_send)
            return
        await self.app(scope, receive, guarded_send)


def _with_security_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    names = {name.lower() for name, _ in headers}
    added = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
    content_type = next((value for name, value in headers if name.lower() == b"content-type"), b"")
    if content_type.startswith(b"text/html"):
        added.append((b"x-frame-options", b"DENY"))
        if b"content-security-policy" not in names:
            added.append((b"content-security-policy", b"frame-ancestors 'none'"))
    return headers + [(name, value) for name, value in added if name not in names]
