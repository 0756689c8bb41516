"""SQS-semantics queues in one SQLite file, shared by every process of a local deployment.

One `SqliteDatabase` per process and data tier holds every queue of that tier (rows carry the queue name).
All statements run on one dedicated thread with its own connection, so the event loop never waits on disk or
on another process's write lock. A claim is one `BEGIN IMMEDIATE` transaction (select the oldest visible
rows, move exhausted ones to the dead-letter queue, `UPDATE ... RETURNING` the rest): SQLite admits one
writer at a time across processes, so no message is handed to two receivers while its visibility lasts. A
receiver that dies just lets the visibility expire.

Wake-up: a waiting `receive` must return promptly when another process sends. `_ChangeWatcher` polls
`PRAGMA data_version` (it changes whenever another connection commits) on a second connection from the event
loop itself: measured at 1.6 us a call with `busy_timeout=0`, so it cannot block the loop the way a claim
could, and it costs no thread hop. Only when that moved does it read `queue_signals` (one row per queue,
bumped by sends, releases and dead-letter moves) and wake the waiters of the queues that were signalled: a
busy request queue does not wake the web tier's response pollers. One watcher task per database serves every
waiting receive, polling every 1 ms for 0.2 s after a wake-up and every 5 ms otherwise. Measured
(`facerec bench queue`, 2 shared cores): median wake-up 1.6-1.7 ms, p90 4-5 ms across processes; CPU about
1% of a core per idle-waiting process (2% while other queues are busy). Polling needs no cleanup when a
process dies, unlike a socket or FIFO per waiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from facerec.ports import MessageTooLarge, PortError, QueueStats, ReceivedMessage

log = logging.getLogger(__name__)

RECEIVE_MAX = 10
WAIT_MAX_S = 20.0
BUSY_TIMEOUT_MS = 10_000
WAL_SWITCH_RETRY_S = 0.005
CHECK_BUSY_TIMEOUT_S = 0.5
"""The readiness probe's own busy timeout: a probe answers within seconds, whatever holds the database."""
POLL_FAST_S = 0.001
POLL_IDLE_S = 0.005
FAST_AFTER_CHANGE_S = 0.2
SEND_CHUNK = 500

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body TEXT NOT NULL,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT
);
CREATE INDEX IF NOT EXISTS messages_visible ON messages (queue, visible_at);
CREATE INDEX IF NOT EXISTS messages_receipt ON messages (receipt) WHERE receipt IS NOT NULL;
CREATE TABLE IF NOT EXISTS queue_signals (queue TEXT PRIMARY KEY, version INTEGER NOT NULL) WITHOUT ROWID;
"""
# Bumped with every commit that can make a queue's messages receivable sooner: waiters watch their row.
_SIGNAL = """
INSERT INTO queue_signals (queue, version) VALUES (?, 1) ON CONFLICT (queue) DO UPDATE SET version = version + 1
"""
SIGNAL_SQL = _SIGNAL
"""Bumps a queue's row in `queue_signals` (parameter: the queue name), for modules that add queues."""

# Oldest first (by visibility, then arrival). Receipts are fresh random handles per delivery.
_VISIBLE = (
    "SELECT seq, receive_count FROM messages WHERE queue = ? AND visible_at <= ? ORDER BY visible_at, seq LIMIT ?"
)
_TAKE = """
UPDATE messages
SET receive_count = receive_count + 1, receipt = lower(hex(randomblob(16))), visible_at = ?
WHERE seq IN ({placeholders})
RETURNING seq, message_id, body, receipt, receive_count
"""
_TO_DEAD_LETTER = "UPDATE messages SET queue = ?, visible_at = ?, receive_count = 0, receipt = NULL WHERE seq = ?"
_DROP = "DELETE FROM messages WHERE seq = ?"


def _body_size_check(body: str, limit: int) -> None:
    size = len(body.encode("utf-8"))
    if size > limit:
        raise MessageTooLarge(f"{size} bytes > {limit}")


Token = tuple[int, int]
"""(watcher epoch, queue signal version): changes when the queue got messages or releases."""


class _ChangeWatcher:
    """Wakes the receivers waiting on a queue when another connection signals that queue.

    Senders bump the queue's row in `queue_signals` in the same transaction as their insert; the watcher reads
    that small table only when `PRAGMA data_version` says something was committed, and wakes only the waiters
    of queues whose version moved. Other commits (claims, deletes, other queues) wake nobody."""

    def __init__(self, path: Path) -> None:
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Never wait for a lock on the event loop: a busy file counts as "everything changed".
        self._connection.execute("PRAGMA busy_timeout = 0")
        self._data_version = -1
        self._epoch = 0
        self._versions: dict[str, int] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._waiters = 0
        self._task: asyncio.Task[None] | None = None
        self._last_change = time.monotonic()
        self._poll()

    def _poll(self) -> None:
        try:
            data_version = int(self._connection.execute("PRAGMA data_version").fetchone()[0])
            if data_version == self._data_version:
                return
            versions = dict(self._connection.execute("SELECT queue, version FROM queue_signals").fetchall())
        except sqlite3.Error:
            self._epoch += 1
            self._data_version = -1
            self._wake(list(self._events))
            return
        self._data_version = data_version
        # A row that disappeared counts too: a deleted reply queue wakes its waiters (they raise QueueNotFound).
        changed = [
            queue
            for queue in versions.keys() | self._versions.keys()
            if self._versions.get(queue) != versions.get(queue)
        ]
        self._versions = versions
        self._wake(changed)

    def _wake(self, queues: list[str]) -> None:
        for queue in queues:
            event = self._events.pop(queue, None)
            if event is not None:
                event.set()
                # Traffic for a waited-on queue tends to come in bursts: poll fast for a while.
                self._last_change = time.monotonic()

    def _token(self, queue: str) -> Token:
        return self._epoch, self._versions.get(queue, 0)

    def snapshot(self, queue: str) -> Token:
        """The queue's token now; pass it to `wait_changed` after looking for messages."""
        self._poll()
        return self._token(queue)

    async def wait_changed(self, queue: str, seen: Token, within_s: float) -> None:
        """Returns when `queue` was signalled since `seen`, or after `within_s` seconds."""
        if self._token(queue) != seen:
            return
        event = self._events.setdefault(queue, asyncio.Event())
        self._waiters += 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="sqlite-queue-watcher")
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=within_s)
        finally:
            self._waiters -= 1

    def notify(self) -> None:
        """Check at once (after a commit from this process) instead of at the next poll."""
        self._poll()

    async def _run(self) -> None:
        while self._waiters > 0:
            idle_for = time.monotonic() - self._last_change
            await asyncio.sleep(POLL_FAST_S if idle_for < FAST_AFTER_CHANGE_S else POLL_IDLE_S)
            self._poll()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._epoch += 1
        self._wake(list(self._events))
        self._connection.close()


def _wal_mode(connection: sqlite3.Connection, deadline: float) -> str:
    """Switch the file to WAL (persistent: once any connection did, the others find it so) and return the mode.

    Switching needs the file to itself, and SQLite answers "database is locked" at once instead of waiting in
    the busy handler when another connection is opening the same new file: two workers started together on a
    fresh data directory did (one in three runs of a test), and the loser crashed. Retried until `deadline`."""
    while True:
        try:
            current = str(connection.execute("PRAGMA journal_mode").fetchone()[0])
            if current.lower() == "wal":
                return current
            return str(connection.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(WAL_SWITCH_RETRY_S)


class SqliteDatabase:
    """The SQLite file holding all queues of one data tier; `await SqliteDatabase.open(path)`, then `aclose()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facerec-sqlite")
        self._local = threading.local()
        self._watcher: _ChangeWatcher | None = None
        self._closed = False

    @classmethod
    async def open(cls, path: Path) -> SqliteDatabase:
        database = cls(path)
        try:
            await database.run(database._create_schema)
            database._watcher = _ChangeWatcher(path)
        except BaseException:
            await database.aclose()
            raise
        return database

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def watcher(self) -> _ChangeWatcher:
        if self._watcher is None:
            raise PortError(f"queue database {self.path} is not open")
        return self._watcher

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
            connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # NORMAL: in WAL mode a power cut may lose the last commits but never corrupts the file.
            connection.execute("PRAGMA synchronous = NORMAL")
            self._local.connection = connection
        return connection

    def _create_schema(self, connection: sqlite3.Connection) -> None:
        mode = _wal_mode(connection, deadline=time.monotonic() + BUSY_TIMEOUT_MS / 1000)
        if str(mode).lower() != "wal":
            raise PortError(f"queue database {self.path}: WAL mode unavailable (got {mode})")
        connection.executescript(_SCHEMA)

    async def run(self, call: Callable[[sqlite3.Connection], T]) -> T:
        """Run `call(connection)` on the database thread; SQLite errors become PortError."""
        if self._closed:
            raise PortError(f"queue database {self.path} is closed")

        def job() -> T:
            try:
                return call(self._connection())
            except sqlite3.Error as exc:
                raise PortError(f"queue database {self.path}: {exc}") from exc

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, job)

    def transaction(self, connection: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` inside BEGIN IMMEDIATE: takes the write lock first, so concurrent claims serialise."""
        connection.execute("BEGIN IMMEDIATE")
        try:
            result = work(connection)
            connection.execute("COMMIT")
        except BaseException:
            # Also after a failed COMMIT: a transaction left open would fail every later BEGIN.
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return result

    async def probe(self, what: str, table: str) -> None:
        """Raise PortError unless `table` can be read. A read on a connection of its own, opened read-only with a
        short busy timeout and always closed: a probe takes no write lock, cannot leave a transaction open, and
        never queues behind (or stalls) this process's work on the database thread. In WAL mode a read does not
        wait for writers."""
        path = self.path

        def read() -> None:
            try:
                connection = sqlite3.connect(
                    f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=CHECK_BUSY_TIMEOUT_S
                )
            except sqlite3.Error as exc:
                raise PortError(f"{what} {path}: {exc}") from exc
            try:
                connection.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchall()  # noqa: S608 - our own table names
            except sqlite3.Error as exc:
                raise PortError(f"{what} {path}: {exc}") from exc
            finally:
                connection.close()

        if self.closed:
            raise PortError(f"{what} {path} is closed")
        await asyncio.to_thread(read)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watcher is not None:
            await self._watcher.close()

        def close_connection() -> None:
            connection = getattr(self._local, "connection", None)
            if connection is not None:
                connection.close()

        loop = asyncio.get_running_loop()
        with contextlib.suppress(sqlite3.Error):
            await loop.run_in_executor(self._executor, close_connection)
        self._executor.shutdown(wait=True)


class SqliteQueue:
    """One named queue in a `SqliteDatabase`, with the semantics of `MemoryQueue` across processes."""

    receive_cancel_safe = True
    """A receive cancelled while its claim runs hands the claimed messages back (`_unreceive`)."""

    def __init__(
        self,
        database: SqliteDatabase,
        name: str,
        visibility_timeout: float = 30.0,
        max_receives: int | None = None,
        dead_letter: str | None = None,
        max_message_bytes: int = 1024,
    ) -> None:
        self.database = database
        self.name = name
        self.visibility_timeout = visibility_timeout
        self.max_receives = max_receives
        self.dead_letter = dead_letter
        self.max_message_bytes = max_message_bytes
        self._outbox: list[tuple[str, str, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def send(self, body: str) -> str:
        """Group commit: sends that arrive while a transaction is running go together in the next one, so many
        concurrent senders (the web tier under load) cost one commit, not one each. A lone send is not delayed."""
        _body_size_check(body, self.max_message_bytes)
        message_id = uuid.uuid4().hex
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append((message_id, body, sent))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_outbox(), name=f"queue-send-{self.name}")
        await asyncio.shield(sent)
        return message_id

    async def _flush_outbox(self) -> None:
        while self._outbox:
            chunk, self._outbox = self._outbox[:SEND_CHUNK], self._outbox[SEND_CHUNK:]
            try:
                await self.database.run(functools.partial(self._insert, [(i, body) for i, body, _ in chunk]))
            except Exception as exc:
                for _, _, sent in chunk:
                    if not sent.done():
                        sent.set_exception(exc)
                continue
            for _, _, sent in chunk:
                if not sent.done():
                    sent.set_result(None)
            self.database.watcher.notify()

    async def send_batch(self, bodies: Sequence[str]) -> list[str]:
        for body in bodies:
            _body_size_check(body, self.max_message_bytes)
        ids = [uuid.uuid4().hex for _ in bodies]
        for start in range(0, len(bodies), SEND_CHUNK):
            chunk = list(zip(ids[start : start + SEND_CHUNK], bodies[start : start + SEND_CHUNK], strict=True))
            await self.database.run(functools.partial(self._insert, chunk))
        self.database.watcher.notify()
        return ids

    def _insert(self, chunk: list[tuple[str, str]], connection: sqlite3.Connection) -> None:
        self.database.transaction(connection, lambda c: self._insert_rows(c, chunk))

    def _check_exists(self, c: sqlite3.Connection) -> None:
        """Raise QueueNotFound inside a send's or receive's transaction when the queue was deleted (the fixed
        queues always exist; a reply queue overrides this)."""
        return None

    def _insert_rows(self, c: sqlite3.Connection, chunk: list[tuple[str, str]]) -> None:
        self._check_exists(c)
        now = time.time()
        c.executemany(
            "INSERT INTO messages (queue, message_id, body, visible_at) VALUES (?, ?, ?, ?)",
            [(self.name, message_id, body, now) for message_id, body in chunk],
        )
        c.execute(_SIGNAL, (self.name,))

    def _retire(self, c: sqlite3.Connection, exhausted: list[int], now: float) -> None:
        """Messages received max_receives times: to the dead-letter queue, or dropped without one."""
        if self.dead_letter is not None:
            c.executemany(_TO_DEAD_LETTER, [(self.dead_letter, now, seq) for seq in exhausted])
            c.execute(_SIGNAL, (self.dead_letter,))
        else:
            c.executemany(_DROP, [(seq,) for seq in exhausted])
        log.warning(
            "queue_messages_dead_lettered" if self.dead_letter else "queue_messages_dropped",
            extra={"queue": self.name, "dead_letter": self.dead_letter, "count": len(exhausted)},
        )

    def _exhausted(self, receive_count: int) -> bool:
        return self.max_receives is not None and receive_count >= self.max_receives

    def _claim(
        self, connection: sqlite3.Connection, limit: int, visibility_timeout: float
    ) -> tuple[list[ReceivedMessage], float | None]:
        """Messages taken, and when the next hidden one becomes visible (wall clock) if none were."""

        def work(c: sqlite3.Connection) -> tuple[list[ReceivedMessage], float | None]:
            self._check_exists(c)
            now = time.time()
            taken: list[ReceivedMessage] = []
            # Like SQS, a message over max_receives moves to the dead-letter queue when a receive reaches it;
            # only the rows looked at are checked, so a receive costs the same with any backlog.
            while len(taken) < limit:
                candidates = c.execute(_VISIBLE, (self.name, now, limit - len(taken))).fetchall()
                exhausted = [seq for seq, count in candidates if self._exhausted(count)]
                fresh = [seq for seq, count in candidates if not self._exhausted(count)]
                if exhausted:
                    self._retire(c, exhausted, now)
                if fresh:
                    query = _TAKE.format(placeholders=",".join("?" * len(fresh)))
                    rows = c.execute(query, (now + visibility_timeout, *fresh)).fetchall()
                    taken += [
                        ReceivedMessage(mid, body, receipt, count) for _, mid, body, receipt, count in sorted(rows)
                    ]
                if not exhausted:
                    break
            next_visible = None
            if not taken:
                query = "SELECT min(visible_at) FROM messages WHERE queue = ?"
                next_visible = c.execute(query, (self.name,)).fetchone()[0]
            return taken, next_visible

        return self.database.transaction(connection, work)

    async def receive(
        self, max_messages: int = 10, wait_seconds: float = 0.0, visibility_timeout: float | None = None
    ) -> list[ReceivedMessage]:
        limit = max(1, min(max_messages, RECEIVE_MAX))
        timeout = self.visibility_timeout if visibility_timeout is None else visibility_timeout
        deadline = time.monotonic() + max(0.0, min(wait_seconds, WAIT_MAX_S))
        watcher = self.database.watcher
        while True:
            # Snapshot before looking: a send committed after it wakes us even if the claim just missed it.
            seen = watcher.snapshot(self.name)
            claim = asyncio.ensure_future(self.database.run(lambda c: self._claim(c, limit, timeout)))
            try:
                taken, next_visible = await asyncio.shield(claim)
            except asyncio.CancelledError:
                # The claim runs to its end on the database thread whatever happens here: give back what it
                # took, so a stopping worker's cancelled receive spends no delivery.
                await asyncio.shield(self._give_back(claim))
                raise
            remaining = deadline - time.monotonic()
            if taken or remaining <= 0:
                return taken
            if next_visible is not None:
                remaining = min(remaining, max(0.0, next_visible - time.time()) + POLL_FAST_S)
            await watcher.wait_changed(self.name, seen, remaining)

    async def _give_back(self, claim: asyncio.Future[tuple[list[ReceivedMessage], float | None]]) -> None:
        try:
            taken, _ = await claim
        except Exception:
            return  # the claim failed: nothing was taken
        if taken:
            await self._unreceive([message.receipt for message in taken])
            log.info("queue_receive_given_back", extra={"queue": self.name, "count": len(taken)})

    async def _unreceive(self, receipts: Sequence[str]) -> None:
        """Undo a receive: visible at once, receive count as before, the receipts void."""

        def work(c: sqlite3.Connection) -> None:
            c.executemany(
                "UPDATE messages SET visible_at = ?, receive_count = max(receive_count - 1, 0), receipt = NULL "
                "WHERE queue = ? AND receipt = ?",
                [(time.time(), self.name, receipt) for receipt in receipts],
            )
            c.execute(_SIGNAL, (self.name,))

        await self.database.run(lambda c: self.database.transaction(c, work))
        self.database.watcher.notify()

    async def delete_batch(self, receipts: Sequence[str]) -> None:
        if not receipts:
            return
        params = [(self.name, receipt) for receipt in receipts]

        def work(c: sqlite3.Connection) -> None:
            c.executemany("DELETE FROM messages WHERE queue = ? AND receipt = ?", params)

        await self.database.run(lambda c: self.database.transaction(c, work))

    async def change_visibility(self, receipts: Sequence[str], timeout_seconds: float) -> None:
        if not receipts:
            return

        def work(c: sqlite3.Connection) -> None:
            visible_at = time.time() + timeout_seconds
            c.executemany(
                "UPDATE messages SET visible_at = ? WHERE queue = ? AND receipt = ?",
                [(visible_at, self.name, receipt) for receipt in receipts],
            )
            # Any change, not only a release: a waiter may be sleeping until the old (later) visibility.
            c.execute(_SIGNAL, (self.name,))

        await self.database.run(lambda c: self.database.transaction(c, work))
        self.database.watcher.notify()

    async def stats(self) -> QueueStats:
        def query(c: sqlite3.Connection) -> QueueStats:
            row = c.execute(
                "SELECT count(*), coalesce(sum(visible_at <= ?), 0) FROM messages WHERE queue = ?",
                (time.time(), self.name),
            ).fetchone()
            total, visible = int(row[0]), int(row[1])
            return QueueStats(visible=visible, in_flight=total - visible)

        return await self.database.run(query)

    async def check(self) -> None:
        await self.database.probe("queue database", "messages")
