"""Membership and leases of a local deployment's web processes: two tables in the queues' SQLite file.

Every web process started on the same data directory opens the same `queues.sqlite3`, so the tables are shared
the way the queues are. An acquire is one `BEGIN IMMEDIATE` transaction (read the lease row, apply
`next_lease`, write it back): SQLite admits one writer at a time across processes, so two processes can never
both see the lease free and both take it. Times are `time.time()` (one machine, one clock).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from facerec.adapters.lease_rule import next_lease
from facerec.adapters.local_queue import SqliteDatabase
from facerec.ports import Lease, WebMember

_SCHEMA = """
CREATE TABLE IF NOT EXISTS web_members (
    web_id TEXT PRIMARY KEY,
    reply_queue TEXT NOT NULL,
    in_flight INTEGER NOT NULL,
    heartbeat_at REAL NOT NULL,
    address TEXT NOT NULL,
    pid INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL,
    token INTEGER NOT NULL
) WITHOUT ROWID;
"""
_UPSERT_MEMBER = (
    "INSERT OR REPLACE INTO web_members (web_id, reply_queue, in_flight, heartbeat_at, address, pid) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_MEMBERS = "SELECT web_id, reply_queue, in_flight, heartbeat_at, address, pid FROM web_members ORDER BY web_id"
_LEASE = "SELECT name, holder, expires_at, token FROM leases WHERE name = ?"
_UPSERT_LEASE = (
    "INSERT INTO leases (name, holder, expires_at, token) VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
    "holder = excluded.holder, expires_at = excluded.expires_at, token = excluded.token"
)


def _lease(row: tuple[str, str, float, int] | None) -> Lease | None:
    return None if row is None else Lease(row[0], row[1], float(row[2]), int(row[3]))


class LocalCoordination:
    """`await LocalCoordination.open(database)`; closed with the database."""

    def __init__(self, database: SqliteDatabase, clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self._clock = clock

    @classmethod
    async def open(cls, database: SqliteDatabase, clock: Callable[[], float] = time.time) -> LocalCoordination:
        await database.run(lambda c: c.executescript(_SCHEMA))
        return cls(database, clock)

    async def heartbeat(self, member: WebMember) -> None:
        row = (
            member.web_id,
            member.reply_queue,
            member.in_flight,
            member.heartbeat_at,
            member.address,
            member.pid,
        )

        def work(c: sqlite3.Connection) -> None:
            c.execute(_UPSERT_MEMBER, row)

        await self.database.run(lambda c: self.database.transaction(c, work))

    async def members(self) -> list[WebMember]:
        def query(c: sqlite3.Connection) -> list[WebMember]:
            rows = c.execute(_MEMBERS).fetchall()
            return [WebMember(w, q, int(n), float(t), a, int(p)) for w, q, n, t, a, p in rows]

        return await self.database.run(query)

    async def leave(self, web_id: str) -> None:
        def work(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM web_members WHERE web_id = ?", (web_id,))

        await self.database.run(lambda c: self.database.transaction(c, work))

    def _acquire(self, name: str, holder: str, ttl_s: float, c: sqlite3.Connection) -> Lease | None:
        def work(c: sqlite3.Connection) -> Lease | None:
            row = c.execute(_LEASE, (name,)).fetchone()
            lease = next_lease(_lease(row), name, holder, ttl_s, self._clock())
            if lease is not None:
                c.execute(_UPSERT_LEASE, (lease.name, lease.holder, lease.expires_at, lease.token))
            return lease

        return self.database.transaction(c, work)

    async def acquire(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        return await self.database.run(lambda c: self._acquire(name, holder, ttl_s, c))

    async def release(self, name: str, holder: str) -> None:
        def work(c: sqlite3.Connection) -> None:
            # Kept, expired, rather than deleted: the next holder's token must still grow.
            c.execute(
                "UPDATE leases SET expires_at = min(expires_at, ?) WHERE name = ? AND holder = ?",
                (self._clock(), name, holder),
            )

        await self.database.run(lambda c: self.database.transaction(c, work))

    async def lease(self, name: str) -> Lease | None:
        def query(c: sqlite3.Connection) -> Lease | None:
            return _lease(c.execute(_LEASE, (name,)).fetchone())

        return await self.database.run(query)

    async def check(self) -> None:
        await self.database.probe("coordination database", "leases")
