"""The load generator against a tiny real HTTP server on 127.0.0.1 (not the facerec service)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from click.testing import CliRunner
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from facerec.bench.load import command, judge, parse_metrics, report_lines, run_load, summarize
from facerec.testing import jpeg_bytes

ANSWERS = {"a": "Alice", "b": "Bob", "c": "Mallory"}  # c is answered wrongly, d fails


async def recognize(request: Request) -> PlainTextResponse:
    async with request.form() as form:  # closes the spooled upload
        upload = form["inputFile"]
        assert isinstance(upload, UploadFile) and upload.filename
        stem = Path(upload.filename).stem
    await asyncio.sleep(0.01)
    if stem == "d":
        return PlainTextResponse("boom", status_code=503)
    return PlainTextResponse(f"{stem}:{ANSWERS[stem]}")


@dataclass
class Seen:
    """What `/lanes` saw: the client ports (one per connection) and the most requests in flight at once."""

    ports: set[int] = field(default_factory=set)
    in_flight: int = 0
    most: int = 0


SEEN = Seen()


async def lanes(request: Request) -> PlainTextResponse:
    assert request.client is not None
    SEEN.ports.add(request.client.port)
    SEEN.in_flight += 1
    SEEN.most = max(SEEN.most, SEEN.in_flight)
    try:
        return await recognize(request)
    finally:
        SEEN.in_flight -= 1


async def metrics(_: Request) -> PlainTextResponse:
    return PlainTextResponse(
        "# TYPE facerec_in_flight_requests gauge\nfacerec_in_flight_requests 3\n"
        "# TYPE facerec_workers gauge\nfacerec_workers 2\n"
    )


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    routes = [
        Route("/", recognize, methods=["POST"]),
        Route("/lanes", lanes, methods=["POST"]),
        Route("/metrics", metrics),
    ]
    app = Starlette(routes=routes)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(5)


@pytest.fixture
def workload(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "images"
    folder.mkdir()
    for stem in "abcd":
        (folder / f"{stem}.jpg").write_bytes(jpeg_bytes())
    (folder / "notes.txt").write_text("not an image")
    labels = tmp_path / "labels.csv"
    labels.write_text("Image,Results\na,Alice\nb,Bob\nc,Carol\nd,Dave\n")
    return folder, labels


def test_judge_compares_the_name_after_the_stem() -> None:
    labels = {"test_00": "Paul"}
    assert judge("test_00.jpg", 200, "test_00:Paul", labels) is True
    assert judge("test_00.jpg", 200, "test_00:Bob", labels) is False
    assert judge("test_00.jpg", 504, "timeout", labels) is None
    assert judge("other.jpg", 200, "other:Paul", labels) is None


def test_parse_metrics_sums_labelled_series() -> None:
    text = '# TYPE x counter\nx_total{status="200"} 3\nx_total{status="503"} 2\n'
    assert parse_metrics(text) == {"x_total": 5.0}


async def test_run_counts_correct_wrong_and_failed(server_url: str, workload: tuple[Path, Path]) -> None:
    folder, _ = workload
    files = sorted(folder.glob("*.jpg"))
    labels = {"a": "Alice", "b": "Bob", "c": "Carol", "d": "Dave"}
    run = await run_load(server_url, files, 40, concurrency=8, labels=labels, progress=False, linger_s=0.2)
    summary = summarize(run)
    assert summary["requests"] == 40
    assert (summary["succeeded"], summary["failed"]) == (30, 10)
    assert (summary["correct"], summary["wrong"]) == (20, 10)
    assert summary["latency_p50_s"] <= summary["latency_p99_s"] <= summary["latency_max_s"]
    assert summary["max_workers_seen"] == 2
    assert any(s.in_flight == 3 for s in run.samples)


async def test_each_lane_keeps_one_connection_and_the_concurrency_is_reached(
    server_url: str, workload: tuple[Path, Path]
) -> None:
    folder, _ = workload
    files = sorted(folder.glob("[abc].jpg"))
    SEEN.ports.clear()
    SEEN.most = 0
    run = await run_load(server_url + "lanes", files, 60, concurrency=6, labels={}, sample=False, progress=False)
    assert summarize(run)["succeeded"] == 60
    assert SEEN.most == 6  # never more than asked for, and all of it used
    assert len(SEEN.ports) == 6  # kept alive: one connection per lane, no reconnects


def test_cli_prints_course_lines_and_writes_json_and_plot(
    server_url: str, workload: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, labels = workload
    out_json, out_png = tmp_path / "load.json", tmp_path / "load.png"
    result = CliRunner().invoke(
        command,
        [
            "--num_request", "8", "--url", server_url, "--image_folder", str(folder),
            "--prediction_file", str(labels), "--concurrency", "4", "--no-progress", "--linger", "0.2",
            "--json", str(out_json), "--plot", str(out_png),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Total number of requests: 8" in result.output
    assert "Total number of requests completed successfully: 6" in result.output
    assert "Total number of correct predictions : 4" in result.output
    assert "Total Test Duration:" in result.output
    assert json.loads(out_json.read_text())["runs"][0]["summary"]["requests"] == 8
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_lines_start_with_the_course_statistics() -> None:
    summary = {
        "requests": 1, "succeeded": 1, "failed": 0, "correct": 1, "wrong": 0, "total_response_time_s": 0.5,
        "duration_s": 0.5, "throughput_rps": 2.0, "latency_p50_s": 0.5, "latency_p90_s": 0.5,
        "latency_p99_s": 0.5, "latency_max_s": 0.5, "score_duration_per_request_s": 0.5,
    }  # fmt: skip
    lines = report_lines(summary)
    assert lines[0] == "Total number of requests: 1"
    assert lines[6] == "Total Test Duration: 0.500 (seconds)"
