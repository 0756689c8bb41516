"""Fuzz the HTTP API from its own OpenAPI schema (schemathesis, bounded examples), and the text the schema
cannot describe (filenames, person names, Authorization headers) with hypothesis: no input gives a 5xx, and a
rejected request leaves nothing in a store.

The app runs in a real uvicorn server (in a thread) on the in-process data tier with an instant fake worker,
so every generated request goes through the full HTTP stack: multipart parsing, size guard, routing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from facerec.settings import Settings
from facerec.testing import instant_worker_companion, jpeg_bytes, memory_data_tier
from facerec.web.app import create_app
from tests.e2e.processes import free_port

# Failed key attempts are not rate-limited here: a 429 would hide the routes behind it from the fuzzer.
SETTINGS = Settings(
    request_deadline_s=5.0,
    web_poll_wait_s=0.5,
    shutdown_grace_s=0.5,
    max_upload_bytes=64 * 1024,
    auth_failures_per_minute=1_000_000,
)
PHOTO = jpeg_bytes((30, 160, 90))
APP = create_app(SETTINGS, memory_data_tier, companions=[instant_worker_companion()])
SCHEMA = schemathesis.openapi.from_dict(APP.openapi())


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(APP, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(10)


@SCHEMA.parametrize()
@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_server_error(case: schemathesis.Case, server_url: str) -> None:
    response = case.call(base_url=server_url, timeout=10)
    assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}"
    # The schema documents every status and body the API can answer.
    case.validate_response(response, checks=[status_code_conformance, response_schema_conformance])


def _stored() -> int:
    data = APP.state.data
    return sum(len(store.objects) for store in (data.inputs, data.gallery))


def _form(field: str, filename: str, extra: bytes = b"") -> bytes:
    disposition = f'Content-Disposition: form-data; name="{field}"; filename="'.encode() + filename.encode() + b'"'
    return b"--fz\r\n" + disposition + b"\r\nContent-Type: image/jpeg\r\n\r\n" + PHOTO + b"\r\n" + extra + b"--fz--\r\n"


# Any text a client can put in a filename or a name: every unicode category, control characters, NUL, long.
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=4096)


@pytest.fixture(scope="module")
def client(server_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server_url, timeout=10) as session:
        yield session


@given(filename=_TEXT, person=_TEXT, authorizations=st.lists(st.text(max_size=60), max_size=3))
@hypothesis_settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_filenames_names_and_authorization_headers_never_get_a_server_error(
    filename: str, person: str, authorizations: list[str], client: httpx.Client
) -> None:
    headers = [("Content-Type", "multipart/form-data; boundary=fz")]
    # Values an HTTP client can send at all: h11 (under httpx) refuses one with leading or trailing whitespace
    # before it leaves the client (hypothesis found " ").
    sendable = [value for value in authorizations if value.isprintable() and value.isascii() and value == value.strip()]
    headers += [("Authorization", value) for value in sendable]
    quoted = quote(person, safe="") or "%20"
    requests = [
        ("POST", "/", _form("inputFile", filename)),
        ("POST", "/v1/recognitions", _form("inputFile", filename)),
        ("POST", f"/v1/people/{quoted}/photos", _form("photos", filename)),
        (
            "POST",
            "/v1/verifications",
            _form(
                "image1",
                filename,
                b'--fz\r\nContent-Disposition: form-data; name="person"\r\n\r\n' + person.encode() + b"\r\n",
            ),
        ),
        ("DELETE", f"/v1/people/{quoted}", b""),
    ]
    for method, path, body in requests:
        before = _stored()
        response = client.request(method, path, content=body, headers=headers)
        assert response.status_code < 500, f"{method} {path} -> {response.status_code}: {response.text[:300]}"
        if response.status_code >= 400:
            assert _stored() <= before, f"{method} {path} -> {response.status_code} left an object behind"
