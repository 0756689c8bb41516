"""A web process's place in its deployment (#15): several web processes share one data tier, each with a
random web id, a reply channel of its own and a membership heartbeat the others (and the scaler) read.

- Reply channel: whoever takes the lease `reply:<prefix>-resp-queue` reads the fixed response queue, exactly as a
  lone web process always has (its requests carry no `reply_to`); every other process creates
  `<prefix>-resp-<web id>` and names it as the `reply_to` of its requests. The lease's TTL is `web_stale_s` and it
  is renewed with each heartbeat, so the fixed queue changes reader only when its reader is dead by the same
  criterion as its membership.
- Membership: a `WebMember` heartbeat every `web_heartbeat_s`, and at once (within ~0.1 s) when the in-flight
  count becomes 0 or leaves 0, so the scaler sees a burst start and end without waiting a whole period.
- Reaping: a member whose heartbeat is older than `web_stale_s` is dead: its reply queue is deleted (never the
  fixed one) and it is forgotten. Reply queues that belong to no member at all (a process that died between its
  heartbeat and its first sweep, or a delete that failed) are deleted too; a process heartbeats *before* it
  creates its queue, so a queue listed before the members were read always has its member in that read.
- Clean stop (`leave`): after the web tier drained, delete the own reply queue, release the reply lease, leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from facerec.logs import error_text
from facerec.ports import Coordination, MessageQueue, PortError, ReplyQueues, WebMember
from facerec.reply_names import is_process_reply_queue
from facerec.settings import Settings

log = logging.getLogger(__name__)

EDGE_CHECK_S = 0.1
"""How often the in-flight count is looked at for a 0 <-> non-0 change (the debounce of the extra heartbeat)."""
CALL_TIMEOUT_S = 10.0
"""Longest wait for one coordination call in the background loop: a hung store must not stop the heartbeats."""


def new_web_id() -> str:
    """12 random lowercase hex digits (`reply_names.WEB_ID_PATTERN`)."""
    return secrets.token_hex(6)


def reply_lease(settings: Settings) -> str:
    """The lease whose holder reads the fixed response queue."""
    return f"reply:{settings.resp_queue}"


@dataclass(frozen=True, slots=True)
class ReplyChannel:
    queue: MessageQueue
    """Where this process's answers arrive."""
    own: bool
    """True: a per-process queue this process created (named as `reply_to`); False: the fixed queue."""

    @property
    def reply_to(self) -> str | None:
        """What this process's requests carry: None on the fixed queue (byte-identical to a lone process)."""
        return self.queue.name if self.own else None


class Deployment:
    """`await join()` at start (before the response poller starts), `await leave()` after the drain."""

    def __init__(
        self,
        settings: Settings,
        coordination: Coordination,
        replies: ReplyQueues,
        fixed_responses: MessageQueue,
        in_flight: Callable[[], int],
        *,
        address: str = "",
        web_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.coordination = coordination
        self.replies = replies
        self._fixed = fixed_responses
        self._in_flight = in_flight
        self.address = address
        self.web_id = web_id or new_web_id()
        self._clock = clock
        self.channel: ReplyChannel | None = None
        self.live_members: list[WebMember] = []
        """Every member with a fresh heartbeat at the last read, this process included."""
        self.fresh_members = False
        """Set by the scaler's leader: read the members four times per heartbeat period rather than once."""
        self.reply_lease_lost = False
        self.reaped = 0
        self._reported_busy: bool | None = None
        self._task: asyncio.Task[None] | None = None

    # --- start and stop ------------------------------------------------------------------------
    async def join(self) -> ReplyChannel:
        """Reap the dead, choose the reply channel (creating the own queue), heartbeat, start the loop."""
        with contextlib.suppress(PortError):  # a sweep that fails now is retried by the loop
            await self.sweep(orphans=True)
        lease = await self.coordination.acquire(reply_lease(self.settings), self.web_id, self.settings.web_stale_s)
        if lease is not None:
            self.channel = ReplyChannel(self._fixed, own=False)
            await self.heartbeat()
        else:
            name = self.settings.reply_queue(self.web_id)
            self.channel = ReplyChannel(await self._heartbeat_then_create(name), own=True)
        await self.read_members()
        log.info(
            "web_joined",
            extra={
                "web_id": self.web_id,
                "reply_queue": self.channel.queue.name,
                "members": len(self.live_members),
                "address": self.address,
            },
        )
        self._task = asyncio.create_task(self._run(), name="facerec-deployment")
        return self.channel

    async def _heartbeat_then_create(self, name: str) -> MessageQueue:
        await self.coordination.heartbeat(self._member(name))
        return await self.replies.create(name)

    async def leave(self) -> None:
        """Clean stop, after the drain: no request of ours waits for an answer any more."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        channel = self.channel
        try:
            if channel is not None and channel.own:
                await self.replies.delete(channel.queue.name)
            elif channel is not None:
                await self.coordination.release(reply_lease(self.settings), self.web_id)
            await self.coordination.leave(self.web_id)
        except PortError as exc:  # the others reap what is left once our heartbeat is stale
            log.warning("web_leave_failed", extra={"web_id": self.web_id, "error": error_text(exc)})
            return
        log.info("web_left", extra={"web_id": self.web_id})

    # --- membership ----------------------------------------------------------------------------
    @property
    def reply_queue_name(self) -> str:
        if self.channel is None:
            raise RuntimeError("not joined")
        return self.channel.queue.name

    def _member(self, reply_queue: str | None = None) -> WebMember:
        return WebMember(
            self.web_id,
            reply_queue or self.reply_queue_name,
            self._in_flight(),
            self._clock(),
            address=self.address,
            pid=os.getpid(),
        )

    async def heartbeat(self) -> None:
        member = self._member()
        await self.coordination.heartbeat(member)
        self._reported_busy = member.in_flight > 0
        if self.channel is not None and not self.channel.own:
            renewed = await self.coordination.acquire(
                reply_lease(self.settings), self.web_id, self.settings.web_stale_s
            )
            if renewed is None and not self.reply_lease_lost:
                # Another process took the fixed queue: we were silent for longer than web_stale_s. Two readers
                # would take each other's answers; /readyz says so, so a balancer stops sending us requests.
                self.reply_lease_lost = True
                log.error("reply_lease_lost", extra={"web_id": self.web_id})

    def others_in_flight(self) -> int:
        """The in-flight counts the other live members reported in their last heartbeats."""
        return sum(m.in_flight for m in self.live_members if m.web_id != self.web_id)

    def is_stale(self, member: WebMember, now: float) -> bool:
        return not member.live_at(now, self.settings.web_stale_s)

    async def read_members(self) -> list[WebMember]:
        now = self._clock()
        members = await self.coordination.members()
        self.live_members = [m for m in members if not self.is_stale(m, now) or m.web_id == self.web_id]
        return members

    async def sweep(self, orphans: bool = False) -> None:
        """Reap the members with a stale heartbeat; with `orphans`, also reply queues no member names."""
        queues = await self.replies.list() if orphans else []  # listed BEFORE the members are read: see module
        members = await self.read_members()
        now = self._clock()
        for member in members:
            if member.web_id != self.web_id and self.is_stale(member, now):
                await self._reap(member.reply_queue, member)
        if orphans:
            named = {m.reply_queue for m in members}
            for name in queues:
                if name not in named and self._deletable(name):
                    await self.replies.delete(name)
                    self.reaped += 1
                    log.warning("reply_queue_reaped", extra={"queue": name, "reason": "no member"})
        if self.channel is not None and all(m.web_id != self.web_id for m in members):
            # Someone reaped *us* (this process was silent past web_stale_s): come back, queue included.
            log.warning("web_rejoined", extra={"web_id": self.web_id})
            if self.channel.own:
                await self._heartbeat_then_create(self.channel.queue.name)
            else:
                await self.heartbeat()

    def _deletable(self, name: str) -> bool:
        return is_process_reply_queue(self.settings.prefix, name)

    async def _reap(self, queue: str, member: WebMember) -> None:
        if self._deletable(queue):
            await self.replies.delete(queue)
        await self.coordination.leave(member.web_id)
        self.reaped += 1
        log.warning(
            "web_member_reaped",
            extra={
                "web_id": member.web_id,
                "reply_queue": queue,
                "silent_s": round(self._clock() - member.heartbeat_at, 1),
                "pid": member.pid,
            },
        )

    # --- the background loop ---------------------------------------------------------------------
    async def _run(self) -> None:
        period = self.settings.web_heartbeat_s
        next_beat = next_read = time.monotonic() + period
        next_orphans = time.monotonic() + self.settings.web_stale_s
        while True:
            await asyncio.sleep(EDGE_CHECK_S)
            now = time.monotonic()
            busy = self._in_flight() > 0
            try:
                if now >= next_beat or busy != self._reported_busy:
                    next_beat = now + period
                    async with asyncio.timeout(CALL_TIMEOUT_S):  # not wait_for: see scaler.leadership
                        await self.heartbeat()
                if now >= next_read:
                    next_read = now + (period / 4 if self.fresh_members else period)
                    orphans = now >= next_orphans
                    if orphans:
                        next_orphans = now + self.settings.web_stale_s
                    async with asyncio.timeout(CALL_TIMEOUT_S):
                        await self.sweep(orphans=orphans)
            except (PortError, TimeoutError) as exc:
                log.warning("web_heartbeat_failed", extra={"web_id": self.web_id, "error": error_text(exc)})
