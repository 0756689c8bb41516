"""Per-process reply queues in the local deployment's `queues.sqlite3`, next to its other queues.

A queue is a registry row (`reply_queues`) plus its messages, which are ordinary `messages` rows carrying the
queue's name, so receiving, visibility and wake-ups are `SqliteQueue`'s. The registry is what makes a deleted
queue gone for everyone at once: `open` of a name without a row raises QueueNotFound, and a send or receive checks the
row in the same transaction as its insert or claim, so a worker holding a handle of a reaped queue gets
QueueNotFound instead of leaving messages nobody will read, and so does a process reading a queue that was
reaped under it (SQS's QueueDoesNotExist)."""

from __future__ import annotations

import sqlite3
import time

from facerec.adapters.local_queue import SIGNAL_SQL, SqliteDatabase, SqliteQueue
from facerec.messages import MAX_RESPONSE_BYTES
from facerec.ports import QueueNotFound
from facerec.reply_names import check_reply_queue_name, is_process_reply_queue

_SCHEMA = "CREATE TABLE IF NOT EXISTS reply_queues (name TEXT PRIMARY KEY, created_at REAL NOT NULL) WITHOUT ROWID"
_EXISTS = "SELECT 1 FROM reply_queues WHERE name = ?"


class SqliteReplyQueue(SqliteQueue):
    """A reply queue: sends and receives fail with QueueNotFound once the queue is deleted (its owner learns
    that it was reaped; a worker, that nobody waits for the answer)."""

    def _check_exists(self, c: sqlite3.Connection) -> None:
        if c.execute(_EXISTS, (self.name,)).fetchone() is None:
            raise QueueNotFound(self.name)


class SqliteReplyQueues:
    """The per-process reply queues of deployment `prefix`; `await SqliteReplyQueues.attach(database, prefix)`."""

    def __init__(
        self,
        database: SqliteDatabase,
        prefix: str,
        visibility_timeout: float = 30.0,
        max_message_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.database = database
        self.prefix = prefix
        self.visibility_timeout = visibility_timeout
        self.max_message_bytes = max_message_bytes

    @classmethod
    async def attach(
        cls,
        database: SqliteDatabase,
        prefix: str,
        visibility_timeout: float = 30.0,
        max_message_bytes: int = MAX_RESPONSE_BYTES,
    ) -> SqliteReplyQueues:
        """The adapter, with its registry table created if this database file predates it."""
        await database.run(lambda c: c.execute(_SCHEMA))
        return cls(database, prefix, visibility_timeout, max_message_bytes)

    def _queue(self, name: str) -> SqliteReplyQueue:
        return SqliteReplyQueue(
            self.database, name, visibility_timeout=self.visibility_timeout, max_message_bytes=self.max_message_bytes
        )

    async def create(self, name: str) -> SqliteReplyQueue:
        check_reply_queue_name(self.prefix, name)

        def work(c: sqlite3.Connection) -> None:
            c.execute("INSERT OR IGNORE INTO reply_queues (name, created_at) VALUES (?, ?)", (name, time.time()))
            # Its signal row from the start: deleting the row at `delete` is what wakes a receive waiting on it.
            c.execute(SIGNAL_SQL, (name,))

        await self.database.run(lambda c: self.database.transaction(c, work))
        return self._queue(name)

    async def open(self, name: str) -> SqliteReplyQueue:
        if not is_process_reply_queue(self.prefix, name):
            raise QueueNotFound(name)  # never a handle on another queue a message merely names
        found = await self.database.run(lambda c: c.execute(_EXISTS, (name,)).fetchone())
        if found is None:
            raise QueueNotFound(name)
        return self._queue(name)

    async def delete(self, name: str) -> None:
        def work(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM reply_queues WHERE name = ?", (name,))
            c.execute("DELETE FROM messages WHERE queue = ?", (name,))
            c.execute("DELETE FROM queue_signals WHERE queue = ?", (name,))

        await self.database.run(lambda c: self.database.transaction(c, work))

    async def list(self) -> list[str]:
        rows = await self.database.run(lambda c: c.execute("SELECT name FROM reply_queues ORDER BY name").fetchall())
        return [name for (name,) in rows if is_process_reply_queue(self.prefix, name)]
