"""The local lease under contention: four connections to one SQLite file (each its own database thread, as four
web processes would have) hammer `acquire` on a lease with a tiny TTL. Every grant is recorded with the
interval it covers; no two holders may ever hold overlapping live intervals, and tokens grow at each hand-over."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from pathlib import Path

from facerec.adapters.local_coordination import LocalCoordination
from facerec.adapters.local_queue import SqliteDatabase
from facerec.ports import Lease

TTL = 0.02
HAMMER_S = 1.0


async def hammer(coordination: LocalCoordination, holder: str, grants: list[Lease]) -> None:
    deadline = time.monotonic() + HAMMER_S
    while time.monotonic() < deadline:
        lease = await coordination.acquire("scaler", holder, TTL)
        if lease is not None:
            grants.append(lease)
            # A holder that pauses (sometimes past its TTL) lets the others race for the lapsed lease.
            await asyncio.sleep(random.uniform(0, 2 * TTL))
        await asyncio.sleep(0)


async def test_no_two_holders_ever_hold_a_live_lease(tmp_path: Path) -> None:
    databases = [await SqliteDatabase.open(tmp_path / "queues.sqlite3") for _ in range(4)]
    try:
        coordinations = [await LocalCoordination.open(database) for database in databases]
        grants: list[Lease] = []
        await asyncio.gather(
            *(hammer(coordination, f"{n:012x}", grants) for n, coordination in enumerate(coordinations))
        )
    finally:
        for database in databases:
            await database.aclose()
    # Each grant covers [expires_at - TTL, expires_at): the transaction's own clock reading, under the write lock.
    grants.sort(key=lambda lease: lease.expires_at)
    handovers = 0
    for before, after in itertools.pairwise(grants):
        if after.holder == before.holder:
            assert after.token == before.token
            continue
        handovers += 1
        assert after.expires_at - TTL >= before.expires_at, (before, after)  # taken only once the other expired
        assert after.token == before.token + 1
    assert len({lease.holder for lease in grants}) >= 2 and handovers >= 2  # the race was really run
