"""`facerec bench web` runs end to end against a real uvicorn and writes its JSON (numbers not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_bench_web_smoke(tmp_path: Path) -> None:
    out = tmp_path / "web.json"
    argv = [sys.executable, "-m", "facerec", "bench", "web", "--requests=40", "--concurrency=8", "--runs=1"]
    done = subprocess.run([*argv, "--backend=memory", f"--json={out}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    [run] = report["runs"]
    assert (run["ok"], run["errors"], run["wrong_answers"]) == (40, 0, 0)
    assert report["backend"] == "memory" and report["median_requests_per_s"] > 0
