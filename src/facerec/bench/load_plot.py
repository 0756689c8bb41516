"""The picture of a load run: latency distribution and the worker-count timeline (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from facerec.bench.load import LoadRun


def plot_run(run: LoadRun, out: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_latency, ax_timeline) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    latencies = [r.latency_s for r in run.records]
    ax_latency.hist(latencies, bins=min(50, max(5, len(latencies) // 10)), color="#3b7dd8")
    ax_latency.set_xlabel("latency (s)")
    ax_latency.set_ylabel("requests")
    ax_latency.set_title("Latency distribution")

    ax_timeline.scatter(
        [r.started_s + r.latency_s for r in run.records], latencies, s=6, alpha=0.4, label="latency at completion (s)"
    )
    if run.samples:
        times = [s.t_s for s in run.samples]
        ax_workers = ax_timeline.twinx()
        ax_workers.step(times, [s.workers or 0 for s in run.samples], where="post", color="#d83b3b", label="workers")
        ax_workers.step(
            times, [s.in_flight or 0 for s in run.samples], where="post", color="#888888", alpha=0.6, label="in flight"
        )
        ax_workers.set_ylabel("workers / requests in flight")
        ax_workers.legend(loc="upper right")
    ax_timeline.axvline(run.duration_s, color="black", linestyle=":", linewidth=1)
    ax_timeline.set_xlabel("time since start (s)")
    ax_timeline.set_ylabel("latency (s)")
    ax_timeline.set_title("Timeline (dotted: last answer)")
    if title:
        fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
