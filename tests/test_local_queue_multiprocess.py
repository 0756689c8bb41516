"""The SQLite queue shared by several processes: 4 consumer processes drain 2000 messages sent while they
run; every message is deleted exactly once and none is lost, and when one consumer is SIGKILLed holding a
batch, the others still drain everything (the held batch comes back after its visibility timeout)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from facerec.adapters.local_queue import SqliteDatabase, SqliteQueue
from tests.paths import REPO_ROOT

pytestmark = pytest.mark.slow

MESSAGES = 2000
CONSUMERS = 4


def start_consumer(tmp_path: Path, index: int, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    argv = [
        sys.executable,
        "-m",
        "tests.contract.queue_consumer",
        str(tmp_path / "queues.sqlite3"),
        "mp",
        str(tmp_path / f"out{index}"),
        str(tmp_path / "done"),
        *extra,
    ]
    # stderr to a file, not a pipe: nobody reads a pipe while the consumer runs, and a full one would block it.
    with open(tmp_path / f"consumer{index}.stderr", "ab") as stderr:
        return subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stderr=stderr)


async def produce(tmp_path: Path) -> None:
    database = await SqliteDatabase.open(tmp_path / "queues.sqlite3")
    try:
        queue = SqliteQueue(database, "mp")
        for start in range(0, MESSAGES, 10):
            await queue.send_batch([str(i) for i in range(start, start + 10)])
            # Paced so sending overlaps the consumers' start-up and their receiving.
            await asyncio.sleep(0.002)
    finally:
        await database.aclose()
    (tmp_path / "done").touch()


def deleted_bodies(tmp_path: Path) -> Counter[str]:
    lines = [line for i in range(CONSUMERS) for line in (tmp_path / f"out{i}").read_text().splitlines()]
    return Counter(line for line in lines if line != "STALLED")


def stalled(log: Path) -> bool:
    return log.exists() and "STALLED" in log.read_text()


def wait_all(processes: list[subprocess.Popen[bytes]], within_s: float, tmp_path: Path) -> None:
    deadline = time.monotonic() + within_s
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in processes:
                other.kill()
            pytest.fail(f"consumers did not drain the queue within {within_s} s")
        assert process.returncode == 0, "\n".join(log.read_text() for log in tmp_path.glob("consumer*.stderr"))


async def test_four_processes_each_message_deleted_exactly_once(tmp_path: Path) -> None:
    # Created first so the consumers and the producer all open an existing file.
    await (await SqliteDatabase.open(tmp_path / "queues.sqlite3")).aclose()
    consumers = [start_consumer(tmp_path, i) for i in range(CONSUMERS)]
    try:
        await produce(tmp_path)
        await asyncio.to_thread(wait_all, consumers, 40, tmp_path)
    finally:
        for process in consumers:
            process.kill()
    counts = deleted_bodies(tmp_path)
    assert set(counts) == {str(i) for i in range(MESSAGES)}
    assert max(counts.values()) == 1
    # Work was shared, not done by one process that happened to win every claim.
    assert sum(1 for i in range(CONSUMERS) if (tmp_path / f"out{i}").stat().st_size > 0) >= 2


async def test_sigkilled_consumer_holding_a_batch_loses_nothing(tmp_path: Path) -> None:
    await (await SqliteDatabase.open(tmp_path / "queues.sqlite3")).aclose()
    # The doomed consumer starts alone so it surely reaches its stall point; the others join while it holds
    # a batch, and it is killed while they drain.
    doomed = start_consumer(tmp_path, 0, "--visibility=1", "--stall-after=100")
    survivors: list[subprocess.Popen[bytes]] = []
    try:
        producing = asyncio.create_task(produce(tmp_path))
        deadline = time.monotonic() + 30
        while not stalled(tmp_path / "out0"):
            assert time.monotonic() < deadline and doomed.poll() is None, "the doomed consumer never stalled"
            await asyncio.sleep(0.02)
        survivors = [start_consumer(tmp_path, i, "--visibility=1") for i in range(1, CONSUMERS)]
        await asyncio.sleep(0.2)
        doomed.send_signal(signal.SIGKILL)
        assert doomed.wait(5) == -signal.SIGKILL
        await producing
        await asyncio.to_thread(wait_all, survivors, 40, tmp_path)
    finally:
        for process in [doomed, *survivors]:
            process.kill()
    counts = deleted_bodies(tmp_path)
    assert set(counts) == {str(i) for i in range(MESSAGES)}


async def test_connections_opening_a_new_database_at_once_all_succeed(tmp_path: Path) -> None:
    """Two workers started together on a fresh data directory: switching the new file to WAL is answered
    "database is locked" at once (no busy wait) for whoever is second, and that worker used to crash. SQLite's
    locks between connections of one process behave as between processes, so 8 openers in threads reproduce it
    (in one round in 10-100 before the fix, hence 200 rounds)."""
    for round_ in range(200):
        path = tmp_path / f"queues-{round_}.sqlite3"
        opened = await asyncio.gather(*(SqliteDatabase.open(path) for _ in range(8)), return_exceptions=True)
        failures = [result for result in opened if isinstance(result, BaseException)]
        for result in opened:
            if isinstance(result, SqliteDatabase):
                await result.aclose()
        assert failures == [], f"round {round_}: {failures}"
