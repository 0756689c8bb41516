"""The local Fleet: app-tier workers as subprocesses of this (web) process.

A worker is `pending` from spawn until it creates its ready file (model loaded, data tier open), then
`running`; after `stop()` it is `stopping` until it exits, and once reaped it disappears from `list()`.
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
_EXIT_POLL_S = 0.05


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
    process: subprocess.Popen[bytes]
    ready_file: Path
    launched_at: float
    ready: bool = False
    stop_requested_at: float | None = None
    started_mono: float = field(default_factory=time.monotonic)

    @property
    def worker_id(self) -> str:
        return f"local-{self.process.pid}"

    def state(self) -> WorkerState:
        if self.stop_requested_at is not None:
            return WorkerState.STOPPING
        if not self.ready and self.ready_file.exists():
            self.ready = True  # sticky: one stat per pending worker per list(), none once running
            log.info(
                "worker_ready",
                extra={"worker": self.name, "pid": self.process.pid, "ready_s": round(self._age(), 3)},
            )
        return WorkerState.RUNNING if self.ready else WorkerState.PENDING

    def info(self) -> WorkerInfo:
        return WorkerInfo(self.worker_id, self.name, self.state(), self.launched_at)

    def _age(self) -> float:
        return time.monotonic() - self.started_mono

    def signal(self, signum: int) -> None:
        # The worker leads its own process group: signal its helpers (e.g. compile workers) too.
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signum)


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
    ) -> None:
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

    async def list(self) -> list[WorkerInfo]:
        self._reap()
        return [w.info() for w in self._workers]

    async def start(self, count: int) -> builtins.list[WorkerInfo]:
        if self._closed:
            raise PortError("fleet is closed")
        self._reap()
        active = sum(1 for w in self._workers if w.stop_requested_at is None)
        started = [self._spawn() for _ in range(max(0, min(count, self.max_workers - active)))]
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
        shutil.rmtree(self._run_dir, ignore_errors=True)

    def _spawn(self) -> _Worker:
        taken = {w.number for w in self._workers}
        number = next(n for n in itertools.count(1) if n not in taken)
        name = f"{NAME_PREFIX}{number}"
        # A fresh ready-file path per spawn: a file left by an earlier worker of that name never counts.
        ready_file = self._run_dir / f"{name}.{next(self._spawn_seq)}.ready"
        env = {**self._env, NAME_ENV: name, READY_FILE_ENV: str(ready_file)}
        self._log_dir.mkdir(parents=True, exist_ok=True)
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
        worker = _Worker(name, number, process, ready_file, launched_at=time.time())
        self._workers.append(worker)
        log.info("worker_started", extra={"worker": name, "pid": process.pid})
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
                log.info(
                    "worker_exited", extra={**fields, "stop_s": round(time.monotonic() - worker.stop_requested_at, 3)}
                )
        self._workers = alive
