"""`open_data_tier` on the local backend, and the SQLite queue's behaviour between connections (as between
processes): wake-up on another connection's send, on visibility expiry, and failures as PortError."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from facerec.adapters.local_queue import SqliteDatabase, SqliteQueue
from facerec.backend import QUEUE_DB_NAME, open_data_tier
from facerec.ports import PortError
from facerec.settings import Settings

T = TypeVar("T")


def local(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(**{"backend": "local", "data_dir": tmp_path / "fresh" / "data", "prefix": "lt", **overrides})


def is_file(path: Path) -> bool:
    return path.is_file()


async def test_fresh_machine_needs_no_setup_and_wires_the_dead_letter_queue(tmp_path: Path) -> None:
    settings = local(tmp_path, max_receives=1, visibility_timeout_s=30)
    async with open_data_tier(settings) as data:
        assert is_file(settings.data_dir / QUEUE_DB_NAME)
        await data.inputs.put("a.jpg", b"x")
        assert is_file(settings.data_dir / "blobs" / settings.in_bucket / "a.jpg")
        for port in (data.inputs, data.outputs, data.requests, data.responses, data.dead_letters):
            await port.check()
        await data.requests.send("poison")
        [message] = await data.requests.receive(1)
        await data.requests.change_visibility([message.receipt], 0)
        assert await data.requests.receive(1) == []
        [dead] = await data.dead_letters.receive(1)
        assert dead.body == "poison"
        await data.responses.send("r")
    # Reopened (a restart): the state is on disk.
    async with open_data_tier(settings) as data:
        assert (await data.responses.stats()).visible == 1
        assert await data.inputs.get("a.jpg") == b"x"


async def test_unusable_data_dir_is_a_port_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    settings = local(tmp_path, data_dir=tmp_path / "file" / "data")
    with pytest.raises(PortError, match=str(tmp_path / "file")):
        async with open_data_tier(settings):
            pass


async def test_corrupt_queue_file_is_a_port_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / QUEUE_DB_NAME
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(PortError, match=str(path)):
        await SqliteDatabase.open(path)


async def test_closed_database_is_a_port_error(tmp_path: Path) -> None:
    database = await SqliteDatabase.open(tmp_path / QUEUE_DB_NAME)
    queue = SqliteQueue(database, "q")
    await database.aclose()
    with pytest.raises(PortError):
        await queue.check()


async def test_waiting_receive_wakes_on_another_connections_send(tmp_path: Path) -> None:
    receiver_db = await SqliteDatabase.open(tmp_path / QUEUE_DB_NAME)
    sender_db = await SqliteDatabase.open(tmp_path / QUEUE_DB_NAME)
    try:
        receiver, sender = SqliteQueue(receiver_db, "q"), SqliteQueue(sender_db, "q")
        latencies = []
        for _ in range(5):
            waiting = asyncio.create_task(receiver.receive(1, wait_seconds=5))
            await asyncio.sleep(0.3)  # long enough for the watcher to back off to its idle interval
            sent_at = time.perf_counter()
            await sender.send("ping")
            [message] = await waiting
            latencies.append(time.perf_counter() - sent_at)
            await receiver.delete_batch([message.receipt])
        # Woken by the other connection's send (the 5 ms watcher), not by the end of the 5 s wait; the speed
        # itself is `facerec bench queue`'s to measure.
        assert sorted(latencies)[2] < 0.5, latencies
    finally:
        await receiver_db.aclose()
        await sender_db.aclose()


async def test_waiting_receive_wakes_when_visibility_expires(tmp_path: Path) -> None:
    database = await SqliteDatabase.open(tmp_path / QUEUE_DB_NAME)
    try:
        queue = SqliteQueue(database, "q", visibility_timeout=0.3)
        await queue.send("back")
        await queue.receive(1)
        started = time.monotonic()
        [again] = await queue.receive(1, wait_seconds=5)
        assert again.receive_count == 2
        assert 0.2 < time.monotonic() - started < 1.0
    finally:
        await database.aclose()


async def test_traffic_on_one_queue_does_not_wake_waiters_of_another(tmp_path: Path) -> None:
    waiter_db = await SqliteDatabase.open(tmp_path / QUEUE_DB_NAME)
    busy_db = await SqliteDatabase.open(tmp_path / QUEUE_DB_NAME)
    claims = 0
    run = waiter_db.run

    async def counting_run(call: Callable[[sqlite3.Connection], T]) -> T:
        nonlocal claims
        claims += 1
        return await run(call)

    try:
        waiter_db.run = counting_run  # type: ignore[method-assign]
        quiet, busy = SqliteQueue(waiter_db, "quiet"), SqliteQueue(busy_db, "busy")
        waiting = asyncio.create_task(quiet.receive(1, wait_seconds=0.6))
        for _ in range(40):
            await busy.send("x")
            [message] = await busy.receive(1)
            await busy.delete_batch([message.receipt])
            await asyncio.sleep(0.01)
        assert await waiting == []
        assert claims <= 2, f"the quiet queue's receive looked {claims} times"
    finally:
        await waiter_db.aclose()
        await busy_db.aclose()
