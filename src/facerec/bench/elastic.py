"""`facerec bench elastic`: the scaler and the EC2 fleet on the EC2 timing model, in simulated time.

Runs the real `Scaler` and `Ec2Fleet` against `Ec2TimingModel` (pending, boot, model load, stopping, per-second
billing with a 60 s minimum) for each scaling policy on:
- `course-gap-<s>`: the course grader's pattern, 100 requests at once, idle `<s>` seconds after the last
  response, 100 again (5 s: the second workload meets every instance still `stopping`; 60 s: all stopped);
- `bursty`: 20 minutes of bursts (5-60 requests within 3 s, exponential gaps averaging 90 s).
Latencies are sampled per transition from their ranges (`--seeds` runs, requests pooled) and, for the
course pattern, also all at the top of their ranges (`worst-case`, one deterministic run).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from facerec.adapters.ec2_model import Ec2Latencies, Range
from facerec.bench.options import json_option
from facerec.scaler.simulation import Phase, ServiceModel, SimulationResult, policy_settings, simulate

POLICIES: dict[str, dict[str, float]] = {
    "default": {},
    "deadline-120": {"request_deadline_s": 120.0},
    "deadline-120+min-run-60": {"request_deadline_s": 120.0, "min_run_s": 60.0},
    "deadline-120+keep-warm-60": {"request_deadline_s": 120.0, "keep_warm_s": 60.0},
    "deadline-120+keep-warm-300": {"request_deadline_s": 120.0, "keep_warm_s": 300.0},
}
"""Settings overrides on the AWS defaults (15 instances, 1 s scale-in grace, 60 s deadline, no keep-warm).
min-run-60 keeps an instance as long as its start is billed anyway; keep-warm-N keeps it N s after its last
answer."""


def course_pattern(gap_s: float, size: int = 100) -> list[Phase]:
    return [Phase((0.0,) * size), Phase((0.0,) * size, after_idle_s=gap_s)]


def bursty_trace(seed: int, duration_s: float = 1200.0, mean_gap_s: float = 90.0) -> list[Phase]:
    rng = random.Random(seed)
    offsets: list[float] = []
    start = 0.0
    while start < duration_s:
        offsets.extend(start + rng.uniform(0.0, 3.0) for _ in range(rng.randint(5, 60)))
        start += rng.expovariate(1.0 / mean_gap_s)
    return [Phase(tuple(offsets))]


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class Row:
    trace: str
    latencies: str
    policy: str
    runs: int
    requests: int
    timeouts: int
    p50_s: float
    p99_s: float
    max_s: float
    peak_instances: int
    billed_instance_s: float
    """Mean per run."""
    starts: float
    """Instance starts, mean per run."""
    scale_in_s: float
    """Worst over runs: last response of the workload -> no instance pending or running."""
    describe_per_min: float


def summarize(trace: str, latencies: str, policy: str, results: list[SimulationResult]) -> Row:
    requests = [r for result in results for r in result.requests]
    answered = [r.latency for r in requests if r.status == 200 and r.latency is not None]
    minutes = sum(r.duration_s for r in results) / 60
    return Row(
        trace=trace,
        latencies=latencies,
        policy=policy,
        runs=len(results),
        requests=len(requests),
        timeouts=sum(r.timeouts for r in results),
        p50_s=round(percentile(answered, 0.50), 1),
        p99_s=round(percentile(answered, 0.99), 1),
        max_s=round(max(answered, default=math.nan), 1),
        peak_instances=max(r.peak_active for r in results),
        billed_instance_s=round(statistics.mean(r.billed_s for r in results)),
        starts=round(statistics.mean(r.starts for r in results), 1),
        scale_in_s=round(max(r.scale_in_s[-1] for r in results), 2),
        describe_per_min=round(sum(r.api_calls.get("DescribeInstances", 0) for r in results) / minutes, 1),
    )


TRACES: dict[str, Callable[[int], list[Phase]]] = {
    "course-gap-5": lambda seed: course_pattern(5.0),
    "course-gap-60": lambda seed: course_pattern(60.0),
    "bursty": bursty_trace,
}


async def run_all(
    seeds: int, latencies: Ec2Latencies, service: ServiceModel, policies: list[str], traces: list[str]
) -> tuple[list[Row], dict[str, list[float | None]]]:
    rows: list[Row] = []
    per_request: dict[str, list[float | None]] = {}
    for trace in traces:
        make = TRACES[trace]
        for policy in policies:
            settings = policy_settings(**POLICIES[policy])
            sampled = [
                await simulate(make(seed), settings, latencies=latencies, service=service, seed=seed)
                for seed in range(seeds)
            ]
            rows.append(summarize(trace, "sampled", policy, sampled))
            per_request[f"{trace}/{policy}/seed0"] = [
                round(r.latency, 2) if r.status == 200 and r.latency is not None else None for r in sampled[0].requests
            ]
            if trace.startswith("course"):
                worst = await simulate(make(0), settings, latencies=latencies.worst_case(), service=service)
                rows.append(summarize(trace, "worst-case", policy, [worst]))
    return rows, per_request


COLUMNS = (
    ("trace", 14),
    ("latencies", 10),
    ("policy", 27),
    ("requests", 8),
    ("504s", 5),
    ("p50 s", 6),
    ("p99 s", 6),
    ("max s", 6),
    ("peak", 4),
    ("billed inst-s", 13),
    ("starts", 6),
    ("scale-in s", 10),
    ("Describe/min", 12),
)


def table_lines(rows: list[Row]) -> list[str]:
    header = "  ".join(name.ljust(width) for name, width in COLUMNS)
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = (
            row.trace,
            row.latencies,
            row.policy,
            row.requests,
            row.timeouts,
            row.p50_s,
            row.p99_s,
            row.max_s,
            row.peak_instances,
            row.billed_instance_s,
            row.starts,
            row.scale_in_s,
            row.describe_per_min,
        )
        lines.append("  ".join(str(cell).ljust(width) for cell, (_, width) in zip(cells, COLUMNS, strict=True)))
    return lines


def compact_lists(text: str) -> str:
    """Flat lists (numbers, null, ranges) on one line: a run's per-request latencies stay readable."""
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)


def _range(text: str) -> Range:
    low, _, high = text.partition("-")
    try:
        return (float(low), float(high or low))
    except ValueError as exc:
        raise click.BadParameter(f"expected LOW-HIGH seconds, got {text!r}") from exc


@click.command()
@click.option("--seeds", default=5, show_default=True, help="Runs with sampled latencies per trace and policy.")
@click.option("--pending", default="10-40", show_default=True, help="StartInstances -> running (s, LOW-HIGH).")
@click.option("--boot", default="8-15", show_default=True, help="running -> worker unit starts (s).")
@click.option("--worker-ready", default="8-15", show_default=True, help="Worker start -> taking requests (s).")
@click.option("--stopping", default="5-30", show_default=True, help="StopInstances -> stopped (s).")
@click.option("--per-image-s", default=0.45, show_default=True, help="One instance's recognition time per image.")
@click.option("--batch-overhead-s", default=0.3, show_default=True, help="Queue and S3 time per batch.")
@click.option(
    "--policy",
    "policies",
    multiple=True,
    type=click.Choice(list(POLICIES)),
    help="Policies to compare (default: all).",
)
@click.option("--trace", "traces", multiple=True, type=click.Choice(list(TRACES)), help="Traces to run (default: all).")
@click.option("--per-request", is_flag=True, help="Also print each request's latency (seed 0 of each row).")
@json_option(Path("bench-results/elastic.json"))
def command(
    seeds: int,
    pending: str,
    boot: str,
    worker_ready: str,
    stopping: str,
    per_image_s: float,
    batch_overhead_s: float,
    policies: tuple[str, ...],
    traces: tuple[str, ...],
    per_request: bool,
    json_path: Path,
) -> None:
    """Scaling policies on the EC2 timing model (simulated time: runs in seconds, no AWS account)."""
    latencies = Ec2Latencies(
        pending_s=_range(pending), boot_s=_range(boot), worker_ready_s=_range(worker_ready), stopping_s=_range(stopping)
    )
    service = ServiceModel(per_image_s=per_image_s, batch_overhead_s=batch_overhead_s)
    chosen = list(policies) or list(POLICIES)
    # Quiet the fleet's and scaler's per-start lines (thousands of them), and only for this run: the command
    # also runs in-process (tests, notebooks).
    package_log = logging.getLogger("facerec")
    level = package_log.level
    package_log.setLevel(logging.ERROR)
    try:
        rows, requests = asyncio.run(run_all(seeds, latencies, service, chosen, list(traces) or list(TRACES)))
    finally:
        package_log.setLevel(level)
    click.echo(
        f"EC2 timing model: pending {pending} s, boot {boot} s, worker ready {worker_ready} s, stopping {stopping} s, "
        f"billing per second (60 s minimum); worker {per_image_s} s/image + {batch_overhead_s} s/batch; "
        f"15 instances; sampled rows pool {seeds} seeds"
    )
    for line in table_lines(rows):
        click.echo(line)
    if per_request:
        for key, values in requests.items():
            shown = " ".join("504" if v is None else f"{v:.1f}" for v in values)
            click.echo(f"{key}: {shown}")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "latencies": asdict(latencies),
        "service": asdict(service),
        "policies": {name: POLICIES[name] for name in chosen},
        "seeds": seeds,
        "rows": [asdict(row) for row in rows],
        "per_request_latency_s": requests,
    }
    json_path.write_text(compact_lists(json.dumps(report, indent=1)) + "\n")
    click.echo(f"wrote {json_path}")
