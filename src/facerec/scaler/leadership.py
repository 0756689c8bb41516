"""One scaler per deployment: a web process runs the scaler (and opens the fleet) only while it holds the
`scaler` lease.

Timeline of a term, with TTL = `lease_ttl_s`: acquired at t (expires t + TTL); renewed every TTL/3; a holder
that has not renewed by `expires_at - TTL/3` steps down on its own (stops its scaler, closes its fleet) while
the lease is still its own, so the next holder (who can take it only after `expires_at`) never runs beside it.
A process killed with -9 cannot step down: its lease lapses and the next attempt after expiry takes it over
(the others try every TTL/3: takeover within about TTL + TTL/3). Its local workers die with it (parent-death
signal); EC2 instances are state in EC2 that the next leader's fleet lists and adopts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from facerec.logs import error_text
from facerec.ports import Coordination, Lease, PortError

log = logging.getLogger(__name__)

SCALER_LEASE = "scaler"
"""The lease whose holder runs the deployment's scaler (and opens its fleet)."""

Term = Callable[[], AbstractAsyncContextManager[object]]
"""What runs while the lease is held: entered on acquiring, exited on losing it or stopping."""


class Leadership:
    """`await run()` until cancelled (then the term ends and the lease is released)."""

    def __init__(
        self,
        coordination: Coordination,
        holder: str,
        ttl_s: float,
        term: Term,
        *,
        name: str = SCALER_LEASE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.coordination = coordination
        self.holder = holder
        self.ttl_s = ttl_s
        self.name = name
        self._term = term
        self._clock = clock
        self.lease: Lease | None = None
        """The lease while this process leads (the term is running), else None."""
        self.terms = 0
        self._changed = asyncio.Event()

    @property
    def leading(self) -> bool:
        return self.lease is not None

    async def wait_changed(self) -> None:
        """Until this process starts or stops leading (for tests and status)."""
        await self._changed.wait()
        self._changed.clear()

    async def _attempt(self, within_s: float) -> Lease | BaseException | None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that arrives as the
        # call completes, and this loop would then never stop.
        try:
            async with asyncio.timeout(within_s):
                return await self.coordination.acquire(self.name, self.holder, self.ttl_s)
        except (PortError, TimeoutError) as exc:
            return exc

    async def run(self) -> None:
        try:
            while True:
                attempt = await self._attempt(self.ttl_s / 3)
                if isinstance(attempt, Lease):
                    await self._lead(attempt)
                elif isinstance(attempt, BaseException):
                    log.warning("lease_acquire_failed", extra={"lease": self.name, "error": error_text(attempt)})
                await asyncio.sleep(self.ttl_s / 3)
        finally:
            with contextlib.suppress(PortError, TimeoutError):
                # Hand over at once on a clean stop rather than after expiry.
                await asyncio.shield(asyncio.wait_for(self.coordination.release(self.name, self.holder), 5.0))

    async def _lead(self, lease: Lease) -> None:
        """The term runs in a task of its own while this coroutine renews: opening a fleet may take longer than
        a renewal period, and renewals must not wait for it."""
        self.lease = lease
        self.terms += 1
        self._changed.set()
        log.info("lease_acquired", extra={"lease": self.name, "holder": self.holder, "token": lease.token})
        term = asyncio.create_task(self._run_term(), name=f"lease-term-{self.name}")
        hold = asyncio.create_task(self._hold(), name=f"lease-renew-{self.name}")
        try:
            await asyncio.wait({term, hold}, return_when=asyncio.FIRST_COMPLETED)
            failure = term.exception() if term.done() and not term.cancelled() else None
            if failure is not None:
                log.error("lease_term_failed", extra={"lease": self.name, "error": error_text(failure)})
                # Step down so another process can try; this one tries again after a pause.
                with contextlib.suppress(PortError, TimeoutError):
                    async with asyncio.timeout(5.0):
                        await self.coordination.release(self.name, self.holder)
        finally:
            # The term ends (fleet closed) before the lease can be given up. asyncio.wait rather than awaiting the
            # tasks: their own cancellation must not be mistaken for (and swallow) a cancellation of this one.
            hold.cancel()
            term.cancel()
            await asyncio.wait({hold, term})
            for task in (hold, term):
                if not task.cancelled():
                    task.exception()  # retrieved: already logged above when it matters
            self.lease = None
            self._changed.set()
            log.info("lease_term_ended", extra={"lease": self.name, "holder": self.holder})

    async def _run_term(self) -> None:
        async with self._term():
            await asyncio.Event().wait()  # until cancelled

    async def _hold(self) -> None:
        """Renew every TTL/3; return (ending the term) when the lease is lost or could not be renewed in time."""
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            assert self.lease is not None
            step_down_at = self.lease.expires_at - self.ttl_s / 3
            while True:
                remaining = step_down_at - self._clock()
                if remaining <= 0:
                    log.error("lease_not_renewed", extra={"lease": self.name, "holder": self.holder})
                    return
                attempt = await self._attempt(remaining)
                if isinstance(attempt, Lease):
                    self.lease = attempt
                    break
                if attempt is None:
                    log.error("lease_lost", extra={"lease": self.name, "holder": self.holder})
                    return
                log.warning("lease_renew_failed", extra={"lease": self.name, "error": error_text(attempt)})
                await asyncio.sleep(min(0.2, max(0.0, step_down_at - self._clock())))
