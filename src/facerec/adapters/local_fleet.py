"""The local Fleet: app-tier workers as processes on this machine.

How a worker starts (`worker_start`): `fork` (default on Linux) asks the worker template
(`facerec.worker.template`, started with the fleet) to fork one: imports and model load were paid once by
the template, so a worker is ready in a fraction of a second. `spawn` runs a fresh `python -m facerec.worker`
per worker (several seconds of imports each). When the template dies the fleet logs it, spawns meanwhile and
starts a new template; a template that dies before it is ever ready is not restarted (spawn from then on).

A worker is `pending` from its start until it creates its ready file (model loaded, data tier open), then
`running`; after `stop()` it is `stopping` until it exits, and once reaped it disappears from `list()`. A
stopping worker still counts against `max_workers` in `start()`: the worker processes on this machine never
exceed the maximum, even when a scale-out follows a scale-in at once.
`list()` only polls (no waiting), because the scaler calls it several times a second.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import ctypes
import ctypes.util
import itertools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from facerec.adapters.fork_template import ForkTemplate
from facerec.ports import PortError, WorkerInfo, WorkerState
from facerec.settings import Settings
from facerec.worker.memory import MALLOC_ARENAS

log = logging.getLogger(__name__)

NAME_PREFIX = "app-tier-instance-"
READY_FILE_ENV = "FACEREC_WORKER_READY_FILE"
NAME_ENV = "FACEREC_WORKER_NAME"
THREADS_ENV = "FACEREC_TORCH_THREADS"
# The worker finishes its batch within shutdown_grace_s; this margin covers interpreter shutdown.
KILL_MARGIN_S = 2.0
_EXIT_POLL_S = 0.02
TEMPLATE_READY_TIMEOUT_S = 300.0
"""How long a start waits for a loading template (a spawn would pay the same imports anyway)."""
TEMPLATE_LOG = "worker-template.log"


WorkerTimingListener = Callable[[str, float, str], None]
"""(event, seconds, start mode): `ready` with the start-to-ready time, `exited` with the stop time."""


class _Process(Protocol):
    """What the fleet needs of a worker process: `subprocess.Popen` (spawned) or `ForkedProcess`."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...


def usable_cores() -> int:
    with contextlib.suppress(AttributeError, OSError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_command(settings: Settings) -> list[str]:
    return [
        sys.executable,
        "-m",
        "facerec.worker",
        "--backend",
        "local",
        "--data-dir",
        str(settings.data_dir),
        "--prefix",
        settings.prefix,
    ]


def settings_environment(settings: Settings) -> dict[str, str]:
    """The settings given explicitly to this process (CLI options as well as FACEREC_* variables) as
    FACEREC_* variables, so a worker resolves the same values as its parent."""
    explicit = settings.model_dump(mode="json", include=set(settings.model_fields_set) - {"max_workers"})
    env: dict[str, str] = {}
    for key, value in explicit.items():
        if value is None:
            continue  # "unset" has no environment spelling; the worker's default is None as well
        env[f"FACEREC_{key.upper()}"] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return env


def worker_environment(
    settings: Settings, max_workers: int, extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(settings_environment(settings))
    # Workers share the cores: one torch thread pool per core each would oversubscribe them.
    if THREADS_ENV not in env:
        env[THREADS_ENV] = str(max(1, usable_cores() // max(1, max_workers)))
    # Read by glibc at process start: fewer malloc arenas, a smaller peak RSS (see facerec.worker.memory).
    env.setdefault("MALLOC_ARENA_MAX", str(MALLOC_ARENAS))
    env.update(extra or {})
    return env


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn making the child receive SIGTERM when its parent dies (Linux only).

    SIGTERM rather than SIGKILL so an orphaned worker still releases its batch. libc is resolved here, in
    the parent: the child between fork and exec must not load libraries. The signal fires when the
    *thread* that forked dies, so spawn only from the event loop's thread, never from a worker thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


@dataclass(eq=False)
class _Worker:
    name: str
    number: int
    process: _Process
    ready_file: Path
    launched_at: float
    ready: bool = False
    stop_requested_at: float | None = None
    started_mono: float = field(default_factory=time.monotonic)
    how: str = "spawn"
    on_event: WorkerTimingListener | None = None

    @property
    def worker_id(self) -> str:
        return f"local-{self.process.pid}"

    def state(self) -> WorkerState:
        if self.stop_requested_at is not None:
            return WorkerState.STOPPING
        if not self.ready and self.ready_file.exists():
            self.ready = True  # sticky: one stat per pending worker per list(), none once running
            if self.on_event is not None:
                self.on_event("ready", self._age(), self.how)
            log.info(
                "worker_ready",
                extra={
                    "worker": self.name,
                    "pid": self.process.pid,
                    "ready_s": round(self._age(), 3),
                    "start": self.how,
                },
            )
        return WorkerState.RUNNING if self.ready else WorkerState.PENDING

    def info(self) -> WorkerInfo:
        return WorkerInfo(self.worker_id, self.name, self.state(), self.launched_at)

    def _age(self) -> float:
        return time.monotonic() - self.started_mono

    def signal(self, signum: int) -> None:
        # The worker leads its own process group: signal its helpers (e.g. compile workers) too.
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signum)
            except (ProcessLookupError, PermissionError):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(self.process.pid, signum)  # not (yet) leading a group of its own


class LocalFleet:
    """Workers as subprocesses named `app-tier-instance-<n>` (lowest free n, 1-based)."""

    def __init__(
        self,
        settings: Settings,
        *,
        max_workers: int,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
        stop_grace_s: float | None = None,
        template_command: Sequence[str] | None = None,
    ) -> None:
        """`command` replaces the worker command (and implies spawn); `template_command` the template's."""
        if max_workers < 0:
            raise ValueError("max_workers must be >= 0")
        self.max_workers = max_workers
        self._command = list(command) if command is not None else default_command(settings)
        self._env = worker_environment(settings, max_workers, env)
        self._log_dir = log_dir if log_dir is not None else settings.data_dir / "logs"
        self._stop_grace_s = stop_grace_s if stop_grace_s is not None else settings.shutdown_grace_s + KILL_MARGIN_S
        self._run_dir = Path(tempfile.mkdtemp(prefix="facerec-fleet-"))
        self._preexec = _parent_death_signal()
        self._workers: list[_Worker] = []
        self._reapers: set[asyncio.Task[None]] = set()
        self._spawn_seq = itertools.count(1)
        self._closed = False
        self.start_mode = "spawn" if command is not None else settings.worker_start
        self._template_command = list(template_command) if template_command is not None else None
        self._template: ForkTemplate | None = None
        self._template_failures = 0
        self.timing_listeners: list[WorkerTimingListener] = []
        """Told each worker's start-to-ready and stop duration (the web tier's /metrics histograms)."""

    async def prepare(self) -> None:
        """Start the worker template now (fork mode), so its imports overlap with whatever comes first."""
        await self._template_for_start()

    async def _template_for_start(self) -> ForkTemplate | None:
        """The template to fork from, (re)started if needed; None when this fleet spawns instead."""
        if self.start_mode != "fork" or self._closed:
            return None
        template = self._template
        if template is not None and not template.alive:
            code = template.process.poll() if template.process is not None else None
            was_ready = bool(template.ready_info)
            self._template_failures = 0 if was_ready else self._template_failures + 1
            log.warning(
                "template_died",
                extra={"exit_code": code, "was_ready": was_ready, "log": str(self._log_dir / TEMPLATE_LOG)},
            )
            await template.close(timeout_s=0)
            self._template = template = None
            if self._template_failures >= 2:
                self.start_mode = "spawn"
                log.warning("template_disabled", extra={"reason": "died twice before it was ready", "now": "spawn"})
                return None
        if template is None:
            template = ForkTemplate(
                self._env, self._log_dir / TEMPLATE_LOG, command=self._template_command, preexec=self._preexec
            )
            try:
                await template.start()
            except PortError as exc:
                log.warning("template_start_failed", extra={"error": str(exc), "now": "spawn"})
                self.start_mode = "spawn"
                return None
            self._template = template
        return template

    async def list(self) -> list[WorkerInfo]:
        if self.start_mode == "fork" and (self._template is None or not self._template.alive):
            await self._template_for_start()  # started with the first look, restarted after a death
        self._reap()
        return [w.info() for w in self._workers]

    async def start(self, count: int) -> builtins.list[WorkerInfo]:
        if self._closed:
            raise PortError("fleet is closed")
        self._reap()
        # Every worker process still alive counts, stopping ones included: a stopping worker finishes its batch on
        # a core, and `max_workers` bounds the processes on this machine (the scaler asks again once it exited).
        alive = len(self._workers)
        started = [await self._launch() for _ in range(max(0, min(count, self.max_workers - alive)))]
        return [w.info() for w in started]

    async def stop(self, worker_ids: Sequence[str]) -> None:
        wanted = set(worker_ids)
        for worker in self._workers:
            if worker.worker_id in wanted and worker.stop_requested_at is None:
                self._request_stop(worker)

    async def close(self) -> None:
        """Stop every worker and wait until all have exited (killing those past the grace period)."""
        self._closed = True
        for worker in self._workers:
            if worker.stop_requested_at is None:
                self._request_stop(worker)
        if self._reapers:
            await asyncio.gather(*self._reapers, return_exceptions=True)
        self._reap()
        if self._template is not None:
            await self._template.close()
            self._template = None
        shutil.rmtree(self._run_dir, ignore_errors=True)

    async def _launch(self) -> _Worker:
        taken = {w.number for w in self._workers}
        number = next(n for n in itertools.count(1) if n not in taken)
        name = f"{NAME_PREFIX}{number}"
        # A fresh ready-file path per start: a file left by an earlier worker of that name never counts.
        ready_file = self._run_dir / f"{name}.{next(self._spawn_seq)}.ready"
        extra = {NAME_ENV: name, READY_FILE_ENV: str(ready_file)}
        self._log_dir.mkdir(parents=True, exist_ok=True)
        template = await self._template_for_start()
        if template is not None:
            started = time.monotonic()
            if await template.wait_ready(TEMPLATE_READY_TIMEOUT_S):
                try:
                    process = await template.fork(name, extra, self._log_dir / f"{name}.log")
                except PortError as exc:
                    log.warning("worker_fork_failed", extra={"worker": name, "error": str(exc), "now": "spawn"})
                else:
                    worker = _Worker(name, number, process, ready_file, launched_at=time.time(), how="fork")
                    worker.started_mono = started  # start-to-ready includes any wait for the template
                    worker.on_event = self._notify
                    self._workers.append(worker)
                    log.info("worker_started", extra={"worker": name, "pid": process.pid, "start": "fork"})
                    return worker
            else:
                log.warning("worker_start_fallback", extra={"worker": name, "reason": "template not ready"})
        return self._spawn(name, number, ready_file, extra)

    def _notify(self, event: str, seconds: float, how: str) -> None:
        for listener in self.timing_listeners:
            try:
                listener(event, seconds, how)
            except Exception:  # a metrics problem must never break the fleet
                log.exception("timing_listener_failed")

    def _spawn(self, name: str, number: int, ready_file: Path, extra: Mapping[str, str]) -> _Worker:
        env = {**self._env, **extra}
        try:
            with open(self._log_dir / f"{name}.log", "ab") as log_file:
                process = subprocess.Popen(
                    self._command,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # the terminal's Ctrl-C reaches the parent, which stops workers
                    preexec_fn=self._preexec,
                )
        except OSError as exc:
            raise PortError(f"cannot start worker {name}: {exc}") from exc
        worker = _Worker(name, number, process, ready_file, launched_at=time.time(), on_event=self._notify)
        self._workers.append(worker)
        log.info("worker_started", extra={"worker": name, "pid": process.pid, "start": "spawn"})
        return worker

    def _request_stop(self, worker: _Worker) -> None:
        worker.stop_requested_at = time.monotonic()
        worker.signal(signal.SIGTERM)
        log.info("worker_stopping", extra={"worker": worker.name, "pid": worker.process.pid})
        task = asyncio.get_running_loop().create_task(self._await_exit(worker), name=f"reap-{worker.name}")
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    async def _await_exit(self, worker: _Worker) -> None:
        deadline = time.monotonic() + self._stop_grace_s
        while worker.process.poll() is None:
            if time.monotonic() >= deadline:
                log.warning("worker_killed", extra={"worker": worker.name, "grace_s": self._stop_grace_s})
                worker.signal(signal.SIGKILL)
                deadline = float("inf")
            await asyncio.sleep(_EXIT_POLL_S)
        self._reap()

    def _reap(self) -> None:
        alive: list[_Worker] = []
        for worker in self._workers:
            code = worker.process.poll()
            if code is None:
                alive.append(worker)
                continue
            worker.ready_file.unlink(missing_ok=True)
            fields = {"worker": worker.name, "pid": worker.process.pid, "exit_code": code}
            if worker.stop_requested_at is None:
                log.warning("worker_crashed", extra=fields)
            else:
                stop_s = time.monotonic() - worker.stop_requested_at
                log.info("worker_exited", extra={**fields, "stop_s": round(stop_s, 3)})
                self._notify("exited", stop_s, worker.how)
        self._workers = alive
