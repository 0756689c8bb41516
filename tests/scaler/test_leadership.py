"""One scaler per deployment: the `scaler` lease decides which web process runs its term (the scaler and its
fleet). Several Leadership loops share one in-memory Coordination here, as web processes share the data tier."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from facerec.adapters.memory import MemoryCoordination
from facerec.scaler.leadership import Leadership
from tests.scaler.fakes import FlakyCoordination

TTL = 0.3


class Terms:
    """Records every term's start and end (wall clock) per holder, and checks terms never overlap."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.log: list[tuple[str, str, float]] = []
        self.overlaps = 0

    def term(self, holder: str, fail: bool = False) -> Callable[[], AbstractAsyncContextManager[object]]:
        @asynccontextmanager
        async def run() -> AsyncIterator[None]:
            if self.running:
                self.overlaps += 1
            self.running.add(holder)
            self.log.append(("start", holder, time.time()))
            try:
                if fail:
                    raise RuntimeError("the fleet cannot be opened")
                yield
            finally:
                self.running.discard(holder)
                self.log.append(("end", holder, time.time()))

        return run

    def starts(self, holder: str) -> list[float]:
        return [t for event, h, t in self.log if event == "start" and h == holder]


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(leadership: Leadership) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(leadership.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_exactly_one_of_three_leads_and_a_clean_stop_hands_over_at_once() -> None:
    coordination, terms = MemoryCoordination(), Terms()
    a, b, c = (Leadership(coordination, h * 12, TTL, terms.term(h * 12)) for h in "abc")
    async with running(a) as first:
        await until(lambda: a.leading)
        async with running(b), running(c):
            await asyncio.sleep(TTL * 2)  # several renewal periods: nobody else gets in
            assert (a.leading, b.leading, c.leading) == (True, False, False)
            first.cancel()  # a clean stop of the leader: term ended, lease released
            with contextlib.suppress(asyncio.CancelledError):
                await first
            stopped_at = time.time()
            released = await coordination.lease("scaler")
            # Free at once rather than at expiry: one of the others takes it at its next attempt (every TTL/3).
            assert released is not None and released.holder == "a" * 12 and released.expires_at <= stopped_at
            # A term started (`leading` turns true just before the term task runs).
            await until(lambda: "b" * 12 in terms.running or "c" * 12 in terms.running)
    successor = "b" * 12 if terms.starts("b" * 12) else "c" * 12
    assert terms.starts(successor)[0] >= stopped_at
    assert terms.overlaps == 0


async def test_a_leader_that_cannot_renew_steps_down_before_its_lease_expires() -> None:
    shared = MemoryCoordination()
    flaky, terms = FlakyCoordination(shared), Terms()
    leader = Leadership(flaky, "aaaaaaaaaaaa", TTL, terms.term("aaaaaaaaaaaa"))
    follower = Leadership(shared, "bbbbbbbbbbbb", TTL, terms.term("bbbbbbbbbbbb"))
    async with running(leader), running(follower):
        await until(lambda: "aaaaaaaaaaaa" in terms.running)  # leading, and its term has started
        lease = leader.lease
        assert lease is not None
        flaky.failing = True  # the store is unreachable from the leader only
        await until(lambda: not leader.leading)
        ended = [t for event, h, t in terms.log if event == "end" and h == "aaaaaaaaaaaa"][-1]
        assert ended < lease.expires_at  # stepped down while the lease was still its own
        # Its term started, not only its lease taken: `leading` turns true just before the term task runs.
        await until(lambda: "bbbbbbbbbbbb" in terms.running)
        # The follower took over only after that lease expired (the leader could not release it).
        assert terms.starts("bbbbbbbbbbbb")[0] >= lease.expires_at
        follower_lease = follower.lease
        assert follower_lease is not None and follower_lease.token == lease.token + 1
    assert terms.overlaps == 0


async def test_a_dead_leaders_lease_is_taken_over_within_ttl_and_a_third() -> None:
    """kill -9: no step-down, no release. The others notice at their next attempt after expiry."""
    coordination, terms = MemoryCoordination(), Terms()
    dead = await coordination.acquire("scaler", "aaaaaaaaaaaa", TTL)
    assert dead is not None
    survivor = Leadership(coordination, "bbbbbbbbbbbb", TTL, terms.term("bbbbbbbbbbbb"))
    async with running(survivor):
        await until(lambda: "bbbbbbbbbbbb" in terms.running, timeout_s=10)  # its term started, not only its lease
    took_over = terms.starts("bbbbbbbbbbbb")[0]
    assert dead.expires_at <= took_over
    # The design's bound is TTL/3 after expiry; a generous one here (a loaded machine schedules late).
    assert took_over - dead.expires_at < 3.0


async def test_a_term_that_fails_to_start_gives_the_lease_up_and_is_retried() -> None:
    coordination, terms = MemoryCoordination(), Terms()
    broken = Leadership(coordination, "aaaaaaaaaaaa", TTL, terms.term("aaaaaaaaaaaa", fail=True))
    healthy = Leadership(coordination, "bbbbbbbbbbbb", TTL, terms.term("bbbbbbbbbbbb"))
    async with running(broken), running(healthy):
        await until(lambda: healthy.leading)
        await asyncio.sleep(TTL)
        assert healthy.leading and not broken.leading
    assert terms.overlaps == 0


async def test_the_lease_is_released_when_the_loop_is_cancelled_while_leading() -> None:
    coordination, terms = MemoryCoordination(), Terms()
    loop = Leadership(coordination, "a" * 12, TTL, terms.term("a" * 12))
    async with running(loop):
        await until(lambda: "a" * 12 in terms.running)  # its term started, not only its lease
    lease = await coordination.lease("scaler")
    assert lease is not None and lease.expires_at <= time.time()
    assert terms.log[-1][:2] == ("end", "a" * 12)
