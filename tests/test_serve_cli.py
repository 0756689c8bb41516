"""`facerec serve` before it serves: a taken port, and the banner that says what was loaded and where."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from facerec.cli.serve import banner, deployment_line
from facerec.ports import Lease, WebMember
from facerec.recognition.gallery import Gallery, GalleryMeta
from facerec.settings import Settings
from tests.e2e.processes import free_port, interrupt, wait_for_http


def serve_argv(*options: str) -> list[str]:
    return [sys.executable, "-m", "facerec", "serve", *options]


def test_a_taken_port_is_one_sentence_and_touches_no_data(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with socket.socket() as occupant:
        occupant.bind(("127.0.0.1", 0))
        occupant.listen()
        port = occupant.getsockname()[1]
        done = subprocess.run(
            serve_argv(f"--port={port}", f"--data-dir={data_dir}"), capture_output=True, text=True, timeout=60
        )
    assert done.returncode != 0
    assert done.stdout == "", "no banner before the service can listen"
    assert done.stderr.strip().splitlines() == [
        f"127.0.0.1:{port} is already in use (is facerec already running?); "
        f"choose another port with --port, e.g. `facerec serve --port {port + 1}`."
    ]
    assert not data_dir.exists()


def make_gallery(path: Path, names: list[str]) -> Path:
    meta = GalleryMeta(weights="w", crop_size=160, margin=14)
    Gallery(names, np.eye(len(names), 512, dtype=np.float32), meta).save(path)
    return path


def test_banner_names_the_gallery_its_size_and_where_the_data_lives(tmp_path: Path) -> None:
    gallery = str(tmp_path / "g.pt")
    local = Settings(backend="local", data_dir=tmp_path / "data", gallery=gallery)
    lines = banner(local, {"Ada": 1})
    assert f"gallery: {gallery} (1 person)" in lines
    assert f"data: {tmp_path / 'data'} (local backend)" in lines
    assert f"gallery: {gallery} (2 people)" in banner(local, {"Ada": 1, "Bob": 3})

    aws = Settings(backend="aws", prefix="demo", aws_region="eu-west-1")
    text = "\n".join(banner(aws, None))
    assert "data: AWS eu-west-1, buckets and queues named demo-* (e.g. demo-in-bucket, demo-req-queue)" in text
    assert "no gallery: every face is answered `Unknown`" in text
    assert "data_dir" not in text and "local backend" not in text


@pytest.mark.slow
def test_serve_prints_the_banner_with_the_gallery_it_loaded(tmp_path: Path) -> None:
    gallery = make_gallery(tmp_path / "lfw.pt", ["Amelie_Mauresmo", "Hans_Blix", "Hu_Jintao"])
    port = free_port()
    log = tmp_path / "serve.log"
    argv = serve_argv(f"--port={port}", f"--data-dir={tmp_path / 'data'}", f"--gallery={gallery}")
    # The banner is the point here, not worker start: spawn mode skips preloading the model into a template
    # (about 5 s); tests/e2e/test_serve.py serves with the default fork template.
    env = {**os.environ, "FACEREC_WEB_POLL_WAIT_S": "0.5", "FACEREC_WORKER_START": "spawn"}
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 60
        while "try: curl" not in log.read_text() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        text = log.read_text()
        assert f"gallery: {gallery} (3 people)" in text, text
        assert f"data: {tmp_path / 'data'} (local backend)" in text

        wait_for_http(f"http://127.0.0.1:{port}/readyz", timeout_s=60, process=process, log=log)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    finally:
        returncode, _ = interrupt(process, timeout_s=30)
    assert returncode == 0, "Ctrl-C is the normal way to stop the service"
    # Exactly one JSON line for that request (uvicorn's access log stays off), and no ANSI colour copies.
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    health = [line for line in lines if line.get("path") == "/healthz"]
    assert [(line["event"], line["status"]) for line in health] == [("http_request", 200)]
    assert not [line for line in lines if line["logger"] == "uvicorn.access" or "color_message" in line]


def test_banner_says_management_needs_a_key_only_when_other_machines_can_reach_it(tmp_path: Path) -> None:
    public = "\n".join(banner(Settings(data_dir=tmp_path, host="0.0.0.0"), None))
    loopback = "\n".join(banner(Settings(data_dir=tmp_path), None))
    assert "facerec keys create --role manage" in public
    assert "keys" not in loopback


def test_the_banner_says_whether_serve_starts_a_deployment_or_joins_one() -> None:
    settings = Settings(port=8000, web_stale_s=5)
    now = 1_800_000_000.0
    first = deployment_line(settings, "aaaaaaaaaaaa", [], None, now)
    assert first.startswith("deployment: first web process (as web id aaaaaaaaaaaa)")
    assert "`facerec serve --port 8001` with the same data directory" in first
    running = [
        WebMember("bbbbbbbbbbbb", "facerec-resp-queue", 2, now - 1, "127.0.0.1:8000", 11),
        WebMember("cccccccccccc", "facerec-resp-cccccccccccc", 0, now - 60, "127.0.0.1:8002", 12),  # dead
    ]
    joined = deployment_line(settings, "aaaaaaaaaaaa", running, Lease("scaler", "bbbbbbbbbbbb", now + 2, 1), now)
    assert joined == (
        "deployment: joins 1 running web process (bbbbbbbbbbbb at 127.0.0.1:8000) as web id aaaaaaaaaaaa; "
        "the scaler runs in bbbbbbbbbbbb at 127.0.0.1:8000"
    )
    lapsed = deployment_line(settings, None, running, Lease("scaler", "bbbbbbbbbbbb", now - 1, 1), now, processes=3)
    assert "as 3 web processes on this port" in lapsed and "the scaler goes to the first process that asks" in lapsed
