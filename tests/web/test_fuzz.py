"""Fuzz the HTTP API from its own OpenAPI schema (schemathesis, bounded examples): no input gives a 5xx.

The app runs in a real uvicorn server (in a thread) on the in-process data tier with an instant fake worker,
so every generated request goes through the full HTTP stack: multipart parsing, size guard, routing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from facerec.settings import Settings
from facerec.testing import instant_worker_companion, memory_data_tier
from facerec.web.app import create_app
from tests.e2e.processes import free_port

SETTINGS = Settings(request_deadline_s=5.0, web_poll_wait_s=0.5, shutdown_grace_s=0.5, max_upload_bytes=64 * 1024)
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
