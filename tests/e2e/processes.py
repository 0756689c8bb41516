"""Helpers for tests that run facerec as real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, timeout_s: float, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until `url` answers 200; fails early with the process's log if it exits."""
    deadline = time.monotonic() + timeout_s
    # One client for every poll: each new one builds a TLS context (~50 ms of CPU, even for http://), taken from
    # the process being waited for on a 2-core machine.
    with httpx.Client(timeout=1) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"process exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if client.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")


def descendants(pid: int) -> list[int]:
    """All live descendants of `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child in children.get(parent, []):
            found.append(child)
            frontier.append(child)
    return found


def interrupt(process: subprocess.Popen[bytes], timeout_s: float) -> tuple[int, list[int]]:
    """Ctrl-C `process` as a terminal would; its exit code and the descendants still alive after it exited."""
    children = descendants(process.pid)
    process.send_signal(signal.SIGINT)
    returncode = process.wait(timeout=timeout_s)
    return returncode, [pid for pid in children if os.path.exists(f"/proc/{pid}")]


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live process (Linux /proc; zombies, already exited, left out)."""
    table: dict[int, tuple[int, str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[0] in ("Z", "X"):
                continue
            parent = int(fields[1])
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        table[int(stat.parent.name)] = (parent, cmdline)
    return table


def environment_has(pid: int, entry: str) -> bool:
    """Whether process `pid` was started with `entry` (`NAME=value`) in its environment."""
    try:
        return entry.encode() in (Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
    except OSError:
        return False


class WorkerCensus:
    """Counts the app-tier worker processes of one local deployment (data directory), whoever their parent is now:
    a worker orphaned by a killed web process still counts. A worker is a process started by a web process
    (spawned) or forked by a worker template (itself started by a web process), first seen as such and then
    remembered; anything a worker forks in turn (e.g. ctypes running `ldconfig`) is not a worker."""

    def __init__(self, data_dir: Path) -> None:
        self.entry = f"FACEREC_DATA_DIR={data_dir}"
        self.templates: set[int] = set()
        self.known: set[int] = set()
        self.ours: dict[int, bool] = {}

    def count(self, web_pids: set[int]) -> int:
        return len(self.workers(web_pids))

    def workers(self, web_pids: set[int]) -> list[int]:
        table = process_table()
        # Templates first: a worker forked since the last look is recognised by its parent in the same look.
        for pid, (parent, cmdline) in table.items():
            if "facerec.worker.template" in cmdline and parent in web_pids and self._ours(pid):
                self.templates.add(pid)
        workers: list[int] = []
        for pid, (parent, cmdline) in table.items():
            if pid in self.templates or "facerec.worker" not in cmdline:
                continue
            spawned = parent in web_pids and "facerec.worker.template" not in cmdline
            if pid in self.known or ((parent in self.templates or spawned) and self._ours(pid)):
                self.known.add(pid)
                workers.append(pid)
        return workers

    def _ours(self, pid: int) -> bool:
        if pid not in self.ours:
            self.ours[pid] = environment_has(pid, self.entry)
        return self.ours[pid]
