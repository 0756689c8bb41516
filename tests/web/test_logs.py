"""What the web tier logs while it serves good and bad requests: structured JSON, never image bytes or
credentials, and CORS stays off (no Access-Control-* headers for a foreign origin)."""

from __future__ import annotations

import base64
import io
import json
import logging

import pytest

from facerec.logs import JsonFormatter
from facerec.testing import jpeg_bytes
from tests.web.harness import running_web, upload

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYSECRETKEY"


async def test_logs_hold_no_image_bytes_nor_credentials(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID0000")
    image = jpeg_bytes(size=(96, 96))
    caplog.set_level(logging.DEBUG)
    async with running_web() as web:
        assert (await web.client.post("/", **upload(image, "portrait.jpg"))).status_code == 200
        assert (await web.client.post("/", **upload(b"\x00\x01not an image" * 50, "x.jpg"))).status_code == 415
        assert (await web.client.post("/", **upload(b"", "empty.jpg"))).status_code == 400
        assert (await web.client.post("/v1/recognitions", **upload(image, "../../etc/passwd.jpg"))).status_code == 200
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    assert lines, "the web tier logged nothing at all"
    for line in lines:
        json.loads(line)  # every line is one JSON object
    text = "\n".join(lines)
    for needle in (SECRET, "AKIAEXAMPLEKEYID0000", base64.b64encode(image[:48]).decode(), "not an image"):
        assert needle not in text
    raw = "\n".join(str(vars(record)) for record in caplog.records)
    assert image[20:60].hex() not in raw and repr(image[20:60])[2:-1] not in raw


def test_bytes_fields_are_summarised_not_logged() -> None:
    record = logging.makeLogRecord({"msg": "event", "payload": b"\xff\xd8\xff" * 10})
    assert json.loads(JsonFormatter().format(record))["payload"] == "<30 bytes>"
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    logging.getLogger("facerec.test").addHandler(handler)
    try:
        logging.getLogger("facerec.test").warning("uploaded", extra={"data": bytearray(b"abc")})
    finally:
        logging.getLogger("facerec.test").removeHandler(handler)
    assert "<3 bytes>" in buffer.getvalue()


async def test_cors_is_off_by_default() -> None:
    async with running_web() as web:
        preflight = await web.client.options(
            "/", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        response = await web.client.post(
            "/", headers={"Origin": "https://evil.example"}, **upload(jpeg_bytes(), "a.jpg")
        )
    for answer in (preflight, response):
        assert not any(h.lower().startswith("access-control-") for h in answer.headers)


async def test_one_access_line_per_request_with_its_id_and_no_filename(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running_web(max_upload_bytes=2000) as web:
        recognized = await web.client.post("/v1/recognitions", **upload(jpeg_bytes(size=(96, 96)), "secret-name.jpg"))
        refused = await web.client.post("/", **upload(b"\0" * 5000, "huge.jpg"))  # the size guard's early 413
        health = await web.client.get("/healthz?token=abc")
    access = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.getMessage() == "http_request"]
    assert [(line["method"], line["path"], line["status"]) for line in access] == [
        ("POST", "/v1/recognitions", 200),
        ("POST", "/", 413),
        ("GET", "/healthz", 200),
    ]
    assert access[0]["request_id"] == recognized.json()["request_id"] == recognized.headers["x-request-id"]
    assert len({line["request_id"] for line in access}) == 3
    assert refused.headers["x-request-id"] == access[1]["request_id"]
    assert health.headers["x-request-id"] == access[2]["request_id"]
    assert all(isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0 for line in access)
    text = "\n".join(json.dumps(line) for line in access)
    assert "secret-name" not in text and "huge.jpg" not in text and "token" not in text


def test_uvicorn_color_message_is_not_logged() -> None:
    record = logging.makeLogRecord(
        {"msg": "Uvicorn running on %s", "args": ("x",), "color_message": "Uvicorn running on \x1b[1m%s\x1b[0m"}
    )
    line = JsonFormatter().format(record)
    assert "color_message" not in json.loads(line) and "\x1b" not in line and "\\u001b" not in line
