"""A Fleet double for the scaler's tests."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from facerec.ports import Coordination, Lease, PortError, WebMember, WorkerInfo, WorkerState


class FakeFleet:
    """Starts and stops instantly; `fail_next` makes the next call raise like a failing cloud API."""

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self.workers: dict[str, WorkerInfo] = {}
        self.fail_next = 0
        self.peak_active = 0
        self._ids = itertools.count(1)

    def _maybe_fail(self) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise PortError("injected fleet API failure")

    def _active(self) -> int:
        return sum(w.state in (WorkerState.RUNNING, WorkerState.PENDING) for w in self.workers.values())

    async def list(self) -> list[WorkerInfo]:
        self._maybe_fail()
        return list(self.workers.values())

    async def start(self, count: int) -> list[WorkerInfo]:
        self._maybe_fail()
        started = []
        for _ in range(max(0, min(count, self.max_workers - self._active()))):
            n = next(self._ids)
            info = WorkerInfo(f"w{n}", f"app-tier-instance-{n}", WorkerState.RUNNING, launched_at=float(n))
            self.workers[info.worker_id] = info
            started.append(info)
        self.peak_active = max(self.peak_active, self._active())
        return started

    async def stop(self, worker_ids: Sequence[str]) -> None:
        self._maybe_fail()
        for worker_id in worker_ids:
            self.workers.pop(worker_id, None)

    async def close(self) -> None:
        self.workers.clear()


class FlakyCoordination:
    """A Coordination whose lease calls fail (like an unreachable store) while `failing` is set."""

    def __init__(self, inner: Coordination) -> None:
        self.inner = inner
        self.failing = False

    def _maybe_fail(self) -> None:
        if self.failing:
            raise PortError("injected coordination failure")

    async def heartbeat(self, member: WebMember) -> None:
        self._maybe_fail()
        await self.inner.heartbeat(member)

    async def members(self) -> list[WebMember]:
        self._maybe_fail()
        return await self.inner.members()

    async def leave(self, web_id: str) -> None:
        self._maybe_fail()
        await self.inner.leave(web_id)

    async def acquire(self, name: str, holder: str, ttl_s: float) -> Lease | None:
        self._maybe_fail()
        return await self.inner.acquire(name, holder, ttl_s)

    async def release(self, name: str, holder: str) -> None:
        self._maybe_fail()
        await self.inner.release(name, holder)

    async def lease(self, name: str) -> Lease | None:
        return await self.inner.lease(name)

    async def check(self) -> None:
        self._maybe_fail()
