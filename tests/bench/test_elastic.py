"""`facerec bench elastic` end to end on a small run (simulated time: well under a second)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from click.testing import CliRunner

from facerec.bench.elastic import bursty_trace, course_pattern, percentile
from facerec.cli import main


def test_bench_elastic_prints_and_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "elastic.json"
    args = ["bench", "elastic", "--seeds", "2", "--trace", "course-gap-5", "--json", str(out), "--per-request"]
    args += ["--policy", "default", "--policy", "deadline-120+keep-warm-60"]
    level = logging.getLogger("facerec").level
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert logging.getLogger("facerec").level == level, "the command must leave logging as it found it"
    assert "course-gap-5    worst-case  deadline-120+keep-warm-60" in result.output
    report = json.loads(out.read_text())
    rows = {(r["latencies"], r["policy"]): r for r in report["rows"]}
    assert set(rows) == {(lat, pol) for lat in ("sampled", "worst-case") for pol in report["policies"]}
    assert all(r["peak_instances"] <= 15 for r in rows.values())
    kept = rows["worst-case", "deadline-120+keep-warm-60"]
    assert kept["timeouts"] == 0 and kept["requests"] == 200
    # The second workload finds warm instances: half the requests answer within seconds.
    assert kept["p50_s"] < 10
    assert len(report["per_request_latency_s"]["course-gap-5/default/seed0"]) == 200


def test_traces() -> None:
    assert [len(p.offsets) for p in course_pattern(5.0)] == [100, 100]
    [phase] = bursty_trace(seed=1)
    assert len(phase.offsets) > 100 and max(phase.offsets) < 1200 + 3
    assert bursty_trace(seed=1) == bursty_trace(seed=1)
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0 and percentile(list(map(float, range(100))), 0.99) == 98.0
