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
