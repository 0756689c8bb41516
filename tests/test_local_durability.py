"""The local backend's durability and its readiness probe: objects are fsynced (file before the rename, then
its directory), and the queue probe is a read on its own connection that takes no lock and cannot stall the
queue's own work."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from facerec.adapters import local_blob
from facerec.adapters.local_blob import LocalBlobStore
from facerec.adapters.local_queue import SqliteDatabase, SqliteQueue
from facerec.ports import PortError


@pytest.fixture
def disk_events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    events: list[str] = []
    real_fsync, real_replace = local_blob.os.fsync, local_blob.os.replace

    def fsync(descriptor: int) -> None:
        events.append("fsync-dir" if Path(f"/proc/self/fd/{descriptor}").resolve().is_dir() else "fsync-file")
        real_fsync(descriptor)

    def replace(source: str | Path, target: str | Path) -> None:
        events.append("rename")
        real_replace(source, target)

    monkeypatch.setattr(local_blob.os, "fsync", fsync)
    monkeypatch.setattr(local_blob.os, "replace", replace)
    return events


async def test_a_durable_put_syncs_the_file_before_the_rename_and_the_directories_after(
    tmp_path: Path, disk_events: list[str]
) -> None:
    store = LocalBlobStore(tmp_path, "bucket")
    await store.put("embeddings/ada/1.json", b"{}")
    # New directories: the file's, then each parent up to the root, whose entries name them.
    assert disk_events == ["fsync-file", "rename", "fsync-dir", "fsync-dir", "fsync-dir"]
    disk_events.clear()
    await store.put("embeddings/ada/2.json", b"{}")
    assert disk_events == ["fsync-file", "rename", "fsync-dir"]
    assert await store.get("embeddings/ada/2.json") == b"{}"


async def test_durable_writes_can_be_turned_off(tmp_path: Path, disk_events: list[str]) -> None:
    store = LocalBlobStore(tmp_path, "bucket", durable=False)
    await store.put("a/b.json", b"{}")
    assert disk_events == ["rename"]


def assert_write_lock_free(path: Path) -> None:
    """A writer gets the database's write lock at once (timeout 0: raises if anyone still holds it)."""
    writer = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("ROLLBACK")
    finally:
        writer.close()


async def test_the_queue_probe_neither_waits_for_nor_takes_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "queues.sqlite3"
    database = await SqliteDatabase.open(path)
    try:
        queue = SqliteQueue(database, "q")
        holder = sqlite3.connect(path, isolation_level=None, timeout=0)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            await queue.check()  # a read: WAL readers do not wait for writers
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # And the probe itself left no lock behind.
        assert_write_lock_free(path)
    finally:
        await database.aclose()


async def test_the_queue_probe_does_not_queue_behind_the_database_thread(tmp_path: Path) -> None:
    database = await SqliteDatabase.open(tmp_path / "queues.sqlite3")
    release = threading.Event()
    try:
        queue = SqliteQueue(database, "q")
        busy = asyncio.create_task(database.run(lambda connection: release.wait(30)))
        await queue.check()  # answers while the database thread is still busy
        assert not busy.done()
        release.set()
        await busy
    finally:
        release.set()
        await database.aclose()


async def test_a_probe_of_a_broken_database_fails_with_port_error_and_holds_nothing(tmp_path: Path) -> None:
    path = tmp_path / "queues.sqlite3"
    database = await SqliteDatabase.open(path)
    try:
        queue = SqliteQueue(database, "q")
        dropper = sqlite3.connect(path, isolation_level=None)
        dropper.execute("DROP TABLE messages")
        dropper.close()
        with pytest.raises(PortError):
            await queue.check()
        assert_write_lock_free(path)
    finally:
        await database.aclose()


@pytest.mark.parametrize(
    ("mode", "gallery", "requests"), [("gallery", True, False), ("all", True, True), ("off", False, False)]
)
async def test_durable_writes_names_the_stores_that_fsync(
    tmp_path: Path, mode: str, gallery: bool, requests: bool
) -> None:
    from facerec.backend import open_local_data_tier
    from facerec.settings import Settings

    async with open_local_data_tier(Settings(data_dir=tmp_path, durable_writes=mode)) as data:
        stores = [data.gallery, data.inputs, data.outputs]
    assert all(isinstance(store, LocalBlobStore) for store in stores)
    durability = [store.durable for store in stores if isinstance(store, LocalBlobStore)]
    assert durability == [gallery, requests, requests]
