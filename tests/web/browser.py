"""Helpers for driving the web page in a real browser: the app in a uvicorn thread, and Debian's Chromium
under Playwright (never `playwright install`: no browser downloads on this machine)."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from facerec.messages import RecognitionRequest, RecognitionResponse, RecognitionResult, Timings
from facerec.testing import InstantWorker, memory_data_tier
from facerec.web.app import DataTierFactory, create_app
from tests.web.harness import web_settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_browser() -> None:
    """Skip the calling test where Debian's Chromium is not installed (a failure in CI, see tests/conftest.py)."""
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")


class ScriptedWorker:
    """The fake worker's answers: a result registered per image (by content), `NoFace` for anything else.

    Verifications (`InstantWorker` asks once per photo): photos registered under the same name are the same person,
    a photo answered `NoFace` has no face. `requests` records what the page sent (kind, top_k, ...)."""

    def __init__(self) -> None:
        self._results: dict[str, RecognitionResult] = {}
        self._lock = threading.Lock()  # registered from the test thread, read from the server's thread
        self.requests: list[RecognitionRequest] = []

    def register(self, image: bytes, result: RecognitionResult) -> None:
        with self._lock:
            self._results[hashlib.sha256(image).hexdigest()] = result

    def __call__(self, request: RecognitionRequest, data: bytes) -> RecognitionResponse:
        with self._lock:
            result = self._results.get(hashlib.sha256(data).hexdigest())
            self.requests.append(request)
        return RecognitionResponse(
            id=request.id,
            result=result or RecognitionResult(name="NoFace", no_face=True),
            timings=Timings(queue_wait_s=0.0, inference_s=0.0),
            worker="scripted",
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(
    answer: Callable[[RecognitionRequest, bytes], RecognitionResponse],
    data_tier: DataTierFactory = memory_data_tier,
    **settings: Any,
) -> Iterator[str]:
    """The real app (in-memory data tier, fake worker) on a free 127.0.0.1 port; yields its base URL.

    A thread rather than a subprocess: the test can register answers on the worker while the server runs,
    and there is no interpreter start-up to wait for."""
    app = create_app(web_settings(**settings), data_tier, companions=[lambda app, data: InstantWorker(data, answer)])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="page-test-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextmanager
def chromium(user_data_dir: Path) -> Iterator[Any]:
    """A headless Chromium browser context with a fresh profile; yields a Playwright BrowserContext."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1100, "height": 800},
        )
        try:
            yield context
        finally:
            context.close()


class PageProblems:
    """Uncaught script errors and policy violations (e.g. the Content-Security-Policy refusing something),
    which a page can suffer while still looking fine."""

    def __init__(self, page: Any) -> None:
        self.messages: list[str] = []
        page.on("pageerror", lambda error: self.messages.append(f"uncaught: {error}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # Chromium logs every 4xx/5xx fetch as "Failed to load resource"; those are the expected error cases.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.messages.append(f"console: {message.text}")


class FakePeopleApi:
    """The people endpoints (`/v1/people...`) answered inside the browser with `page.route`: the server side is
    being written separately, so these tests pin the page to the agreed contract instead."""

    def __init__(self, people: dict[str, int] | None = None, rejected: dict[str, str] | None = None) -> None:
        self.people = dict(people or {})
        self.rejected = dict(rejected or {})  # filename -> reason the fake refuses it
        self.enroll_requests: list[tuple[str, list[str]]] = []
        self.deleted: list[str] = []

    def install(self, page: Any, base_url: str) -> None:
        page.route(f"{base_url}/v1/people", self._list)
        page.route(f"{base_url}/v1/people/**", self._person)

    def _list(self, route: Any) -> None:
        people = [{"name": name, "photos": count} for name, count in sorted(self.people.items())]
        route.fulfill(status=200, json={"people": people})

    def _person(self, route: Any) -> None:
        from urllib.parse import unquote, urlsplit

        request = route.request
        parts = urlsplit(request.url).path.split("/")  # ['', 'v1', 'people', name, ...]
        name = unquote(parts[3])
        if request.method == "DELETE" and len(parts) == 4:
            self.deleted.append(name)
            existed = self.people.pop(name, None) is not None
            route.fulfill(status=204 if existed else 404, body="")
        elif request.method == "POST" and parts[4:] == ["photos"]:
            filenames = multipart_filenames(request.post_data_buffer or b"", request.headers["content-type"], "photos")
            self.enroll_requests.append((name, filenames))
            used = [f for f in filenames if f not in self.rejected]
            rejected = [{"filename": f, "reason": self.rejected[f]} for f in filenames if f in self.rejected]
            self.people[name] = self.people.get(name, 0) + len(used)
            route.fulfill(status=200, json={"person": name, "used": used, "rejected": rejected})
        else:
            route.fulfill(status=405, json={"error": {"code": "http_405", "message": "method not allowed"}})


def multipart_filenames(body: bytes, content_type: str, field: str) -> list[str]:
    """The filenames of the parts named `field` in a multipart/form-data body, in order."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    return [
        part.get_filename() or ""
        for part in message.iter_parts()
        if part.get_param("name", header="content-disposition") == field
    ]
