"""The `facerec worker` process: load the model once, open the data tier, run the loop, stop on signals.

Threads: the model runs on the main thread (PyTorch is measurably slower from other threads here) and the
asyncio event loop, which keeps receiving, fetching and extending visibility meanwhile, in a second thread.

Readiness protocol for local subprocess workers: when `FACEREC_WORKER_READY_FILE` is set, that file is
created once the model is loaded and warmed up and the data tier is open. `FACEREC_WORKER_NAME` names the
worker in responses and logs (on EC2 without it: the instance id, see `facerec.worker.identity`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import FrameType
from typing import NoReturn, TypedDict

from facerec.ports import DataTier
from facerec.recognition.results import BatchRecognizer
from facerec.settings import Settings
from facerec.worker.identity import worker_name
from facerec.worker.loop import Worker
from facerec.worker.stats import WorkerStats
from facerec.worker.threads import InferenceRunner, MainThreadRunner, run_in_daemon_thread

log = logging.getLogger(__name__)

READY_FILE_ENV = "FACEREC_WORKER_READY_FILE"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

RecognizerFactory = Callable[[Settings], BatchRecognizer]
DataTierOpener = Callable[[Settings], AbstractAsyncContextManager[DataTier]]


class _LoopOutcome(TypedDict, total=False):
    """What the event-loop thread hands back to the main thread: its stats, or what it raised."""

    stats: WorkerStats
    error: BaseException


def preload_recognizer(settings: Settings) -> BatchRecognizer:
    """The real model and gallery, not yet warmed up (the worker template warms up with one thread, then
    each forked worker again with its own; see `facerec.worker.template`). Imports torch."""
    from facerec.gallery_store import blob_key, fetch_gallery
    from facerec.recognition.gallery import Gallery, load_gallery, parse_gallery
    from facerec.recognition.recognizer import Recognizer

    gallery: Gallery | None = None
    stored = fetch_gallery(settings)  # `blob:KEY`, or on aws the file `serve --gallery` uploaded
    if stored is not None:
        source, data = stored
        gallery = parse_gallery(data, settings, source=source)
        log.info("gallery_loaded", extra={"source": source, "entries": len(gallery)})
    elif settings.gallery and blob_key(settings.gallery) is None:
        gallery = load_gallery(settings.gallery, settings)
    return Recognizer(settings, gallery)


def load_recognizer(settings: Settings) -> BatchRecognizer:
    """The real model and gallery, warmed up (imports torch: only ever called in a worker process)."""
    recognizer = preload_recognizer(settings)
    warm_up = getattr(recognizer, "warm_up", None)
    if callable(warm_up):
        warm_up()
    return recognizer


def import_factory(spec: str) -> RecognizerFactory:
    """`module:callable` -> the callable (lets tests and benchmarks run the process with a fake model)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected module:callable, got {spec!r}")
    factory: RecognizerFactory = getattr(importlib.import_module(module_name), attr)  # whatever the spec names
    return factory


def exit_now(code: int = 0) -> NoReturn:
    """End the worker process at once, logs flushed, without the interpreter's teardown."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def mark_ready(path: Path) -> None:
    # Write then rename: whoever polls for the file never sees it half-written.
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(f"{os.getpid()}\n")
    temporary.replace(path)


def _default_opener() -> DataTierOpener:
    from facerec.backend import open_data_tier

    return open_data_tier


async def serve_worker(
    settings: Settings,
    recognizer: BatchRecognizer,
    stop: asyncio.Event,
    *,
    name: str | None = None,
    ready_file: Path | None = None,
    open_tier: DataTierOpener | None = None,
    infer: InferenceRunner = run_in_daemon_thread,
) -> WorkerStats:
    """Open the data tier, signal readiness, run the loop until `stop`, then finish the batch in hand within
    the grace period (past it, release the batch)."""
    name = name or worker_name(settings)
    async with (open_tier or _default_opener())(settings) as data:
        worker = Worker(data, recognizer, settings, name=name, infer=infer)
        if ready_file is None and os.environ.get(READY_FILE_ENV):
            ready_file = Path(os.environ[READY_FILE_ENV])
        if ready_file is not None:
            mark_ready(ready_file)
        await _run_with_grace(worker, stop, settings.shutdown_grace_s)
        return worker.stats


async def _run_with_grace(worker: Worker, stop: asyncio.Event, grace_s: float) -> None:
    task = asyncio.create_task(worker.run(stop), name="facerec-worker")
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        task.result()  # the loop only returns on stop: anything else is a crash to surface
        return
    log.info("worker_stopping", extra={"worker": worker.name, "grace_s": grace_s})
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=grace_s)
    except TimeoutError:
        # The batch did not finish in time: cancelling releases its messages (visibility 0) for others.
        log.warning("grace_period_exceeded", extra={"worker": worker.name, "grace_s": grace_s})
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def run_worker(
    settings: Settings,
    recognizer_factory: RecognizerFactory = load_recognizer,
    *,
    name: str | None = None,
    ready_file: Path | None = None,
    open_tier: DataTierOpener | None = None,
) -> WorkerStats:
    """The whole worker process; call from the main thread. Returns after SIGTERM/SIGINT and a clean stop."""
    name = name or worker_name(settings)
    started = time.monotonic()
    log.info("model_loading", extra={"worker": name, "weights": settings.weights, "gallery": settings.gallery})
    # Nothing is in hand yet: a signal during the load keeps its default action and ends the process.
    recognizer = recognizer_factory(settings)
    log.info("model_ready", extra={"worker": name, "load_s": round(time.monotonic() - started, 3)})

    runner = MainThreadRunner()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    outcome: _LoopOutcome = {}

    def event_loop_thread() -> None:
        try:
            outcome["stats"] = loop.run_until_complete(
                serve_worker(
                    settings, recognizer, stop, name=name, ready_file=ready_file, open_tier=open_tier, infer=runner
                )
            )
        except BaseException as exc:  # re-raised on the main thread
            outcome["error"] = exc
        finally:
            loop.close()
            runner.close()
            if runner.busy and "error" not in outcome:
                # Past the grace period with inference still running: its messages are already released,
                # so leave without waiting for the batch.
                log.warning("exit_during_inference", extra={"worker": name})
                logging.shutdown()
                os._exit(0)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal_received", extra={"worker": name, "signal": signal.Signals(signum).name})
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(stop.set)

    previous = {signum: signal.signal(signum, on_signal) for signum in STOP_SIGNALS}
    thread = threading.Thread(target=event_loop_thread, name="facerec-event-loop")
    try:
        thread.start()
        runner.serve()
        thread.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if "error" in outcome:
        raise outcome["error"]
    stats = outcome["stats"]
    assert isinstance(stats, WorkerStats)
    return stats
