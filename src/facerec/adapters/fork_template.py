"""The local fleet's side of the worker template (`facerec.worker.template`): start it, ask it to fork
workers, learn when they exit, and notice when it dies.

A forked worker is not this process's child, so it is watched through a pidfd (exit without a pid-reuse
race); its exit code comes from the template, which reaps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from facerec.ports import PortError

log = logging.getLogger(__name__)

FD_ENV = "FACEREC_TEMPLATE_FD"
UNKNOWN_EXIT = -1
"""Exit code of a forked worker whose template died before reporting it."""


def template_command() -> list[str]:
    return [sys.executable, "-m", "facerec.worker.template"]


class ForkedProcess:
    """The part of `subprocess.Popen` the fleet uses (`pid`, `poll()`), for a worker the template forked."""

    def __init__(self, pid: int, template: ForkTemplate) -> None:
        self.pid = pid
        self._template = template
        self._pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):  # pidfd_open: Linux 5.3+
            self._pidfd = os.pidfd_open(pid)
        self.returncode: int | None = None

    def _gone(self) -> bool:
        if self._pidfd is not None:
            readable, _, _ = select.select([self._pidfd], [], [], 0)
            return bool(readable)  # readable once the process has terminated
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        return False

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        code = self._template.exit_code(self.pid)
        if code is None and self._gone() and not self._template.alive:
            code = UNKNOWN_EXIT  # its template is gone too: nobody will report the code
        if code is not None:
            self.returncode = code
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        return code


def _wait_or_kill(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ForkTemplate:
    """One template process. `start()` launches it (its imports and model load run meanwhile); `fork()`
    awaits its readiness, then returns a worker in well under a second."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        *,
        command: list[str] | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self._env = dict(env)
        self._log_path = log_path
        self._command = command or template_command()
        self._preexec = preexec
        self.process: subprocess.Popen[bytes] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pump: asyncio.Task[None] | None = None
        self._ready: asyncio.Event | None = None
        self._replies: asyncio.Queue[dict[str, Any]] | None = None
        self._fork_lock: asyncio.Lock | None = None
        self._exit_codes: dict[int, int] = {}
        self.ready_info: dict[str, Any] = {}
        self.started_at = 0.0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None and not self._closed_channel()

    def _closed_channel(self) -> bool:
        return self._pump is not None and self._pump.done()

    @property
    def ready(self) -> bool:
        return self._ready is not None and self._ready.is_set() and self.alive

    def exit_code(self, pid: int) -> int | None:
        return self._exit_codes.get(pid)

    async def start(self) -> None:
        ours = self._launch()
        self._ready = asyncio.Event()
        self._replies = asyncio.Queue()
        self._fork_lock = asyncio.Lock()
        self._reader, self._writer = await asyncio.open_unix_connection(sock=ours)
        self._pump = asyncio.create_task(self._read_events(), name="facerec-template-events")

    def _launch(self) -> socket.socket:
        """Start the process (a fork + exec: milliseconds) with its end of the socket pair; returns ours."""
        ours, theirs = socket.socketpair()
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self._log_path, "ab") as log_file:
                self.process = subprocess.Popen(
                    self._command,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env={**self._env, FD_ENV: str(theirs.fileno())},
                    pass_fds=(theirs.fileno(),),
                    start_new_session=True,
                    preexec_fn=self._preexec,
                )
        except OSError as exc:
            ours.close()
            raise PortError(f"cannot start the worker template: {exc}") from exc
        finally:
            theirs.close()
        self.started_at = time.monotonic()
        log.info("template_started", extra={"pid": self.process.pid})
        return ours

    async def _read_events(self) -> None:
        assert self._reader is not None and self._ready is not None and self._replies is not None
        try:
            while line := await self._reader.readline():
                event = json.loads(line)
                kind = event.get("event")
                if kind == "exited":
                    self._exit_codes[int(event["pid"])] = int(event["code"])
                elif kind == "ready":
                    self.ready_info = event
                    self._ready.set()
                    log.info(
                        "template_ready",
                        extra={
                            "pid": event.get("pid"),
                            "load_s": event.get("load_s"),
                            "rss_kb": event.get("rss_kb"),
                            "ready_s": round(time.monotonic() - self.started_at, 3),
                        },
                    )
                else:
                    await self._replies.put(event)
        except (OSError, ValueError) as exc:
            log.warning("template_channel_failed", extra={"error": str(exc)})
        finally:
            # Wake whoever waits for readiness or a reply: the template is gone.
            await self._replies.put({"event": "gone"})
            self._ready.set()

    async def wait_ready(self, timeout_s: float) -> bool:
        """True once the template can fork; False when it died or did not get there within `timeout_s`."""
        if self._ready is None:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout_s)
        return self.ready

    async def fork(self, name: str, env: Mapping[str, str], log_path: Path) -> ForkedProcess:
        """A new worker process named `name` with `env` (over the template's), logging to `log_path`."""
        if self._writer is None or self._replies is None or self._fork_lock is None or not self.ready:
            raise PortError("the worker template is not running")
        request = {"op": "fork", "name": name, "env": dict(env), "log": str(log_path)}
        async with self._fork_lock:
            try:
                self._writer.write(json.dumps(request).encode("utf-8") + b"\n")
                await self._writer.drain()
            except (OSError, RuntimeError) as exc:
                raise PortError(f"the worker template is gone: {exc}") from exc
            reply = await self._replies.get()
        if reply.get("event") != "forked":
            raise PortError(f"the worker template could not fork {name}: {reply.get('error', reply.get('event'))}")
        return ForkedProcess(int(reply["pid"]), self)

    async def close(self, timeout_s: float = 5.0) -> None:
        """End the template (its remaining children get SIGTERM from their parent-death signal)."""
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, RuntimeError):
                await self._writer.wait_closed()
        if self.process is not None and self.process.poll() is None:
            await asyncio.to_thread(_wait_or_kill, self.process, timeout_s)
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
