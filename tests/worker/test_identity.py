"""A worker on EC2 names itself by its instance id (IMDSv2), so the scaler can match its answers to instances."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from facerec.settings import Settings
from facerec.worker.identity import IMDS_DISABLED_ENV, IMDS_ENDPOINT_ENV, NAME_ENV, instance_id, worker_name

TOKEN = "token-abc"
INSTANCE = "i-0123456789abcdef0"


class _Imds(BaseHTTPRequestHandler):
    """IMDSv2: a PUT for a session token, then GETs that must carry it (v1-style GETs get 401)."""

    instance = INSTANCE
    calls = 0

    def do_PUT(self) -> None:
        type(self).calls += 1
        ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        self._reply(200 if ok else 400, TOKEN)

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            self._reply(401, "")
        elif self.path == "/latest/meta-data/instance-id":
            self._reply(200, self.instance)
        else:
            self._reply(404, "")

    def _reply(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def imds(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Imds)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv(IMDS_ENDPOINT_ENV, endpoint)
    monkeypatch.setattr(_Imds, "calls", 0)
    monkeypatch.delenv(NAME_ENV, raising=False)
    monkeypatch.delenv(IMDS_DISABLED_ENV, raising=False)
    yield endpoint
    server.shutdown()
    server.server_close()


def test_instance_id_over_imdsv2(imds: str) -> None:
    assert instance_id() == INSTANCE


def test_aws_worker_is_named_by_its_instance(imds: str) -> None:
    assert worker_name(Settings(backend="aws")) == INSTANCE


def test_explicit_name_wins(imds: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(NAME_ENV, "app-tier-instance-3")
    assert worker_name(Settings(backend="aws")) == "app-tier-instance-3"


def test_local_backend_never_asks_imds(imds: str) -> None:
    assert worker_name(Settings(backend="local")).endswith(f"-{os.getpid()}")
    assert _Imds.calls == 0


def test_no_imds_falls_back_to_host_pid(imds: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A closed port: connection refused at once (off EC2, 169.254.169.254 times out instead, after 0.5 s).
    with ThreadingHTTPServer(("127.0.0.1", 0), _Imds) as closed:
        port = closed.server_address[1]
    monkeypatch.setenv(IMDS_ENDPOINT_ENV, f"http://127.0.0.1:{port}")
    assert instance_id() is None
    assert not worker_name(Settings(backend="aws")).startswith("i-")


def test_disabled_or_odd_answers_are_not_used(imds: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_Imds, "instance", "<html>captive portal</html>")
    assert instance_id() is None
    monkeypatch.setattr(_Imds, "instance", INSTANCE)
    monkeypatch.setenv(IMDS_DISABLED_ENV, "true")
    assert instance_id() is None
