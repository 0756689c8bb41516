"""The worker template: one process per `facerec serve` that pays the imports and the model load once, then
forks a ready-to-run worker per request from the local fleet (`FACEREC_WORKER_START=fork`).

Why a template of our own rather than multiprocessing's forkserver: a worker must be a process with its own
log file, process group and parent-death signal that the fleet can signal and watch like a spawned one, and
the forkserver gives neither a pid before the start nor control over those. The protocol is JSON lines on a
socket pair (fd in `FACEREC_TEMPLATE_FD`):

- template -> fleet: `{"event": "ready", "pid", "load_s", "rss_kb"}` once loaded; `{"event": "forked",
  "name", "pid"}` or `{"event": "fork_failed", "name", "error"}` per request; `{"event": "exited", "pid",
  "code"}` when a child it forked ends.
- fleet -> template: `{"op": "fork", "name", "env", "log"}`.

Fork safety: the template must hold no thread pool a child would inherit half-alive (GNU OpenMP's pool does
not survive fork: a child's first parallel region waits for threads that do not exist). So the model is
built and warmed up with ONE intra-op thread, which never starts the OpenMP pool; each child then sets its
own thread count, and its warm-up starts its own pool. The template runs no threads of its own (one selector
loop; SIGCHLD through the wakeup fd). It exits when the fleet closes the socket, on SIGTERM, or when its
parent dies; its children get SIGTERM from their parent-death signal and release their batches.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import resource
import selectors
import signal
import socket
import sys
import time
import traceback
from typing import Any

log = logging.getLogger(__name__)

FD_ENV = "FACEREC_TEMPLATE_FD"
FACTORY_ENV = "FACEREC_WORKER_RECOGNIZER_FACTORY"
THREADS_ENV = "FACEREC_TORCH_THREADS"
_PR_SET_PDEATHSIG = 1


def rss_kb() -> int:
    """Resident set size now (VmRSS), or the peak where /proc is not available."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in open("/proc/self/status").read().splitlines():  # noqa: SIM115 - a tiny read
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _die_with_parent() -> None:
    """SIGTERM when the parent exits (Linux): an orphaned template or worker does not outlive `serve`."""
    name = ctypes.util.find_library("c")
    if name is None or not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(name).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def set_intra_op_threads(count: int) -> None:
    """torch's intra-op threads, if torch is loaded (a fake recognizer in tests may not use it)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(max(1, count))


class _Channel:
    """Newline-delimited JSON on a blocking socket, read through the template's selector."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    def send(self, **message: Any) -> None:
        self.sock.sendall(json.dumps(message).encode("utf-8") + b"\n")

    def read(self) -> list[dict[str, Any]] | None:
        """Messages complete so far; None at end of file (the fleet is gone)."""
        chunk = self.sock.recv(65536)
        if not chunk:
            return None
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]


def _child(channel: _Channel, wakeup: socket.socket, recognizer: Any, request: dict[str, Any]) -> None:
    """In the forked child: become a worker and never return into the template's loop."""
    code = 1
    try:
        channel.sock.close()
        wakeup.close()
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.SIG_DFL)
        # Its own session, as a spawned worker has: its own process group (the fleet signals the group) and,
        # where the kernel schedules by session (autogroup), its own CPU share. Sharing the template's session,
        # two workers split one share: measured here 60% slower per image than spawned workers on a busy host.
        os.setsid()
        _die_with_parent()
        descriptor = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(descriptor, 1)
        os.dup2(descriptor, 2)
        os.close(descriptor)
        os.environ.update(request["env"])
        code = run_child(recognizer, request["name"])
    except BaseException:  # nowhere to raise to: report on the worker's log and exit non-zero
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        # Never run the template's atexit handlers or finalizers (they belong to the template).
        os._exit(code)


def run_child(recognizer: Any, name: str) -> int:
    """A forked worker from here on: its own threads and warm-up, then the ordinary worker process."""
    from facerec.settings import Settings
    from facerec.worker.service import run_worker

    started = time.monotonic()
    settings = Settings()
    set_intra_op_threads(int(os.environ.get(THREADS_ENV, settings.torch_threads)))
    warm_up = getattr(recognizer, "warm_up", None)
    if callable(warm_up):
        warm_up()  # starts this process's own thread pool before the first request, not during it
    log.info("worker_forked", extra={"worker": name, "warm_s": round(time.monotonic() - started, 3)})
    run_worker(settings, lambda _: recognizer, name=name)
    return 0


def _build_recognizer() -> Any:
    from facerec.settings import Settings
    from facerec.worker.service import import_factory, preload_recognizer

    settings = Settings()
    spec = os.environ.get(FACTORY_ENV)
    factory = import_factory(spec) if spec else preload_recognizer
    # One thread while building and warming up: see the module docstring (fork safety).
    single = settings.model_copy(update={"torch_threads": 1})
    set_intra_op_threads(1)
    recognizer = factory(single)
    warm_up = getattr(recognizer, "warm_up", None)
    if callable(warm_up):
        warm_up()  # lazy initialisation (allocator, kernels) done once, shared copy-on-write by every child
    return recognizer


def serve_template(channel: _Channel) -> None:
    """Load, announce readiness, then fork on request and report exits until the fleet goes away."""
    started = time.monotonic()
    recognizer = _build_recognizer()
    load_s = time.monotonic() - started
    wake_read, wake_write = socket.socketpair()
    wake_read.setblocking(False)
    wake_write.setblocking(False)
    signal.set_wakeup_fd(wake_write.fileno())
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd hears about exits
    selector = selectors.DefaultSelector()
    selector.register(channel.sock, selectors.EVENT_READ, "fleet")
    selector.register(wake_read, selectors.EVENT_READ, "signal")
    log.info("template_ready", extra={"load_s": round(load_s, 3), "rss_kb": rss_kb()})
    channel.send(event="ready", pid=os.getpid(), load_s=round(load_s, 3), rss_kb=rss_kb())
    while True:
        for key, _ in selector.select():
            if key.data == "signal":
                with contextlib.suppress(BlockingIOError):
                    wake_read.recv(4096)
                _reap(channel)
                continue
            requests = channel.read()
            if requests is None:
                log.info("template_exiting", extra={"reason": "fleet closed"})
                return
            for request in requests:
                _fork(channel, wake_read, recognizer, request)
        _reap(channel)


def _fork(channel: _Channel, wakeup: socket.socket, recognizer: Any, request: dict[str, Any]) -> None:
    name = str(request.get("name", "worker"))
    try:
        pid = os.fork()
    except OSError as exc:
        channel.send(event="fork_failed", name=name, error=str(exc))
        return
    if pid == 0:
        _child(channel, wakeup, recognizer, request)
    channel.send(event="forked", name=name, pid=pid)


def _reap(channel: _Channel) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        channel.send(event="exited", pid=pid, code=os.waitstatus_to_exitcode(status))


def main() -> None:
    from facerec.logs import configure_logging
    from facerec.worker.memory import lean_worker_process

    lean_worker_process()  # before torch is imported: every child inherits it
    configure_logging(os.environ.get("FACEREC_LOG_LEVEL", "INFO"))
    _die_with_parent()
    sock = socket.socket(fileno=int(os.environ.pop(FD_ENV)))
    sock.setblocking(True)
    channel = _Channel(sock)
    try:
        serve_template(channel)
    except (BrokenPipeError, ConnectionResetError):
        log.info("template_exiting", extra={"reason": "fleet closed"})
    except BaseException:
        log.exception("template_failed")
        with contextlib.suppress(OSError):
            channel.send(event="failed", error=traceback.format_exc(limit=3))
        raise
    # Nothing to clean up: skip the interpreter's teardown of torch (seconds) that `serve` would wait for.
    from facerec.worker.service import exit_now

    exit_now()


if __name__ == "__main__":
    main()
