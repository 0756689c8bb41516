"""Prometheus metrics of one app instance, in its own CollectorRegistry (tests build many apps)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facerec.logs import error_text
from facerec.messages import RecognitionResponse
from facerec.ports import MessageQueue
from facerec.web.pending import PendingRequests

log = logging.getLogger(__name__)

WorkerCount = Callable[[], Awaitable[int]]
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# Routes worth their own label; anything else is `other` so scanners cannot blow up label cardinality.
MEASURED_ROUTES = frozenset({"/", "/v1/recognitions"})
# Worker start-to-ready: forked from the template in tenths of a second, spawned in seconds.
WORKER_START_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0)
WORKER_STOP_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# One image's share of a batch stage: matching in tenths of a millisecond, detection in tens of milliseconds.
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# The stages observed; names a newer worker adds are ignored rather than allowed to grow the label set.
WORKER_STAGES = frozenset({"fetch", "decode", "detect", "embed", "match"})


class WebMetrics:
    def __init__(self, pending: PendingRequests, worker_count: WorkerCount | None = None) -> None:
        self.registry = CollectorRegistry()
        self._worker_count = worker_count
        self.in_flight = Gauge(
            "facerec_in_flight_requests", "Requests awaiting a worker answer.", registry=self.registry
        )
        self.in_flight.set_function(lambda: pending.in_flight)
        self.latency = Histogram(
            "facerec_request_latency_seconds",
            "Recognition request latency, upload to answer.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.responses = Counter(
            "facerec_responses", "Recognition responses by status.", ["route", "status"], registry=self.registry
        )
        self.queue_depth = Gauge(
            "facerec_request_queue_depth", "Request queue messages, visible plus in flight.", registry=self.registry
        )
        self.auth_failures = Counter(
            "facerec_auth_failures",
            "Refused API key attempts: `invalid` or `malformed` key, or `rate_limited` (429, not checked).",
            ["reason"],
            registry=self.registry,
        )
        self.upload_bytes_in_flight = Gauge(
            "facerec_upload_bytes_in_flight", "Request body bytes admitted and not yet stored.", registry=self.registry
        )
        self.workers = Gauge("facerec_workers", "App-tier workers pending or running.", registry=self.registry)
        self.worker_start = Histogram(
            "facerec_worker_start_to_ready_seconds",
            "From a worker's start until it is ready (model loaded, data tier open), by start mode.",
            ["start"],
            buckets=WORKER_START_BUCKETS,
            registry=self.registry,
        )
        self.worker_stop = Histogram(
            "facerec_worker_stop_seconds",
            "From a stop request (SIGTERM) until the worker process exited.",
            buckets=WORKER_STOP_BUCKETS,
            registry=self.registry,
        )

        self.worker_stage = Histogram(
            "facerec_worker_stage_seconds",
            "Worker time per recognized image by stage: each answer's share of its batch's stage (the batch's "
            "seconds over the images recognized together), observed once per answer the web tier receives.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )

    def observe_response(self, response: RecognitionResponse) -> None:
        """A response listener: the stage shares a worker reported with its answer (none from older workers)."""
        stages = response.timings.stages if response.timings is not None else None
        for stage, seconds in (stages or {}).items():
            # Finite and non-negative only: one bad value must not poison a histogram's sum for good.
            if stage in WORKER_STAGES and 0.0 <= seconds < float("inf"):
                self.worker_stage.labels(stage).observe(seconds)

    def observe_worker(self, event: str, seconds: float, start: str) -> None:
        """A fleet's timing listener: `ready` (start-to-ready) or `exited` (stop duration)."""
        if event == "ready":
            self.worker_start.labels(start).observe(seconds)
        elif event == "exited":
            self.worker_stop.observe(seconds)

    async def render(self, request_queue: MessageQueue, timeout_s: float = 2.0) -> bytes:
        """The exposition text, with the queue depth and worker count read now (NaN when unreadable)."""
        try:
            stats = await asyncio.wait_for(request_queue.stats(), timeout_s)
            self.queue_depth.set(stats.visible + stats.in_flight)
        except Exception as exc:
            self.queue_depth.set(float("nan"))
            log.warning("metrics_queue_stats_failed", extra={"error": error_text(exc)})
        if self._worker_count is not None:
            try:
                self.workers.set(await asyncio.wait_for(self._worker_count(), timeout_s))
            except Exception as exc:
                self.workers.set(float("nan"))
                log.warning("metrics_worker_count_failed", extra={"error": error_text(exc)})
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Latency and status of every recognition request, including those answered by error handlers."""

    def __init__(self, app: ASGIApp, metrics: WebMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in MEASURED_ROUTES:
            await self.app(scope, receive, send)
            return
        route = scope["path"]
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)
            self.metrics.responses.labels(route, str(status)).inc()
