"""The Coordination contract (membership heartbeats and leases of a deployment's web processes), one body per
adapter: the in-memory reference, the local SQLite tables (and the S3 objects on moto where that adapter runs)."""

from __future__ import annotations

import asyncio

from facerec.ports import Coordination, Lease, WebMember
from tests.contract.kits import CoordinationKit

TTL = 3.0


def member(web_id: str, at: float, in_flight: int = 0, queue: str = "facerec-resp-queue") -> WebMember:
    return WebMember(web_id, queue, in_flight, at, address="127.0.0.1:8000", pid=4242)


async def test_the_adapter_is_a_coordination(coordination: CoordinationKit) -> None:
    assert isinstance(coordination.coordination, Coordination)
    await coordination.coordination.check()


async def test_a_free_lease_is_taken_with_token_one_and_expires_after_its_ttl(coordination: CoordinationKit) -> None:
    c, now = coordination.coordination, coordination.clock.now
    assert await c.lease("scaler") is None
    lease = await c.acquire("scaler", "aaaaaaaaaaaa", TTL)
    assert lease == Lease("scaler", "aaaaaaaaaaaa", now + TTL, 1)
    assert await c.lease("scaler") == lease


async def test_a_live_lease_is_refused_to_others_and_renewed_for_its_holder(coordination: CoordinationKit) -> None:
    c, clock = coordination.coordination, coordination.clock
    first = await c.acquire("scaler", "aaaaaaaaaaaa", TTL)
    assert first is not None
    clock.advance(TTL - 0.5)
    assert await c.acquire("scaler", "bbbbbbbbbbbb", TTL) is None
    renewed = await c.acquire("scaler", "aaaaaaaaaaaa", TTL)
    # A renewal moves the expiry and keeps the token: the holder did not change.
    assert renewed == Lease("scaler", "aaaaaaaaaaaa", clock.now + TTL, first.token)
    clock.advance(TTL - 0.5)  # past the first expiry, within the renewed one
    assert await c.acquire("scaler", "bbbbbbbbbbbb", TTL) is None


async def test_an_expired_lease_is_taken_over_with_a_larger_token(coordination: CoordinationKit) -> None:
    c, clock = coordination.coordination, coordination.clock
    first = await c.acquire("scaler", "aaaaaaaaaaaa", TTL)
    assert first is not None
    clock.advance(TTL + 0.01)
    taken = await c.acquire("scaler", "bbbbbbbbbbbb", TTL)
    assert taken == Lease("scaler", "bbbbbbbbbbbb", clock.now + TTL, first.token + 1)
    # The old holder, back from a pause, cannot renew what it lost.
    assert await c.acquire("scaler", "aaaaaaaaaaaa", TTL) is None
    clock.advance(TTL + 0.01)
    again = await c.acquire("scaler", "aaaaaaaaaaaa", TTL)
    assert again is not None and again.token == first.token + 2


async def test_a_holder_coming_back_to_its_own_lapsed_lease_keeps_the_token(coordination: CoordinationKit) -> None:
    c, clock = coordination.coordination, coordination.clock
    first = await c.acquire("scaler", "aaaaaaaaaaaa", TTL)
    clock.advance(TTL * 2)
    again = await c.acquire("scaler", "aaaaaaaaaaaa", TTL)
    assert first is not None and again is not None and again.token == first.token


async def test_release_hands_over_at_once_and_only_for_the_holder(coordination: CoordinationKit) -> None:
    c = coordination.coordination
    first = await c.acquire("scaler", "aaaaaaaaaaaa", TTL)
    assert first is not None
    await c.release("scaler", "bbbbbbbbbbbb")  # not the holder: nothing happens
    assert await c.acquire("scaler", "bbbbbbbbbbbb", TTL) is None
    await c.release("scaler", "aaaaaaaaaaaa")
    released = await c.lease("scaler")
    assert released is not None and released.expires_at <= coordination.clock.now
    taken = await c.acquire("scaler", "bbbbbbbbbbbb", TTL)
    assert taken is not None and taken.holder == "bbbbbbbbbbbb" and taken.token == first.token + 1
    await c.release("never-taken", "aaaaaaaaaaaa")  # a lease nobody took: not an error
    assert await c.lease("never-taken") is None


async def test_leases_are_independent_by_name(coordination: CoordinationKit) -> None:
    c = coordination.coordination
    assert await c.acquire("scaler", "aaaaaaaaaaaa", TTL) is not None
    reply = await c.acquire("reply:facerec-resp-queue", "bbbbbbbbbbbb", TTL)
    assert reply is not None and reply.token == 1
    assert await c.acquire("reply:facerec-resp-queue", "aaaaaaaaaaaa", TTL) is None


async def test_concurrent_acquires_have_exactly_one_winner(coordination: CoordinationKit) -> None:
    c = coordination.coordination
    holders = [f"{n:012x}" for n in range(8)]
    results = await asyncio.gather(*(c.acquire("scaler", holder, TTL) for holder in holders))
    winners = [lease for lease in results if lease is not None]
    assert len(winners) == 1
    assert await c.lease("scaler") == winners[0]


async def test_members_heartbeat_replace_and_leave(coordination: CoordinationKit) -> None:
    c, now = coordination.coordination, coordination.clock.now
    assert await c.members() == []
    await c.heartbeat(member("bbbbbbbbbbbb", now, queue="facerec-resp-bbbbbbbbbbbb"))
    await c.heartbeat(member("aaaaaaaaaaaa", now))
    await c.heartbeat(member("bbbbbbbbbbbb", now + 1, in_flight=7, queue="facerec-resp-bbbbbbbbbbbb"))
    assert await c.members() == [
        member("aaaaaaaaaaaa", now),
        member("bbbbbbbbbbbb", now + 1, in_flight=7, queue="facerec-resp-bbbbbbbbbbbb"),
    ]
    await c.leave("aaaaaaaaaaaa")
    await c.leave("cccccccccccc")  # never a member: not an error
    assert [m.web_id for m in await c.members()] == ["bbbbbbbbbbbb"]


async def test_members_are_kept_however_stale_their_heartbeat(coordination: CoordinationKit) -> None:
    """Deciding who is dead is the caller's job (it knows FACEREC_WEB_STALE_S): the store forgets nobody."""
    c, clock = coordination.coordination, coordination.clock
    await c.heartbeat(member("aaaaaaaaaaaa", clock.now - 3600))
    clock.advance(3600)
    assert [m.heartbeat_at for m in await c.members()] == [clock.now - 7200]
