"""Worker stage timings reach the web tier's /metrics: each recognized answer is observed once per stage."""

from __future__ import annotations

import re

from prometheus_client import generate_latest

from facerec.messages import RecognitionResponse, Timings
from facerec.web.metrics import WebMetrics
from facerec.web.pending import PendingRequests
from tests.colour_model import ADA, ColourModel, photo, service


def _count(text: str, stage: str) -> float:
    found = re.search(rf'^facerec_worker_stage_seconds_count\{{stage="{stage}"\}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_recognized_requests_show_up_in_the_stage_histograms() -> None:
    async with service([ColourModel()]) as client:
        before = (await client.get("/metrics")).text
        for name in ("a.jpg", "b.jpg"):
            reply = await client.post("/", files={"inputFile": (name, photo(ADA), "image/jpeg")})
            assert reply.status_code == 200, reply.text
        text = (await client.get("/metrics")).text
    assert _count(before, "decode") == 0.0
    # Every answer carries its share of the stages its recognizer reported, plus the batch's fetch.
    for stage in ("fetch", "decode", "match"):
        assert _count(text, stage) == 2.0, stage
    assert _count(text, "embed") == 0.0  # the colour model reports no embedding stage
    assert re.search(r'^facerec_worker_stage_seconds_bucket\{le="\+Inf",stage="decode"\} 2\.0$', text, re.MULTILINE)


def test_unknown_and_invalid_stage_values_are_not_observed() -> None:
    metrics = WebMetrics(PendingRequests())
    stages = {"detect": 0.02, "newfangled": 1.0, "embed": float("nan"), "match": -1.0}
    metrics.observe_response(RecognitionResponse(id="0" * 32, timings=Timings(stages=stages)))
    metrics.observe_response(RecognitionResponse(id="1" * 32))  # an older worker: no timings at all
    text = generate_latest(metrics.registry).decode()
    assert _count(text, "detect") == 1.0
    assert "newfangled" not in text
    assert _count(text, "embed") == 0.0
    assert _count(text, "match") == 0.0
