"""The lease rule every Coordination adapter applies inside its atomic step (a dict, a SQLite IMMEDIATE
transaction, an S3 conditional write), so they cannot disagree on expiry or fencing tokens."""

from __future__ import annotations

from facerec.ports import Lease


def next_lease(current: Lease | None, name: str, holder: str, ttl_s: float, now: float) -> Lease | None:
    """The lease `holder` gets from `current` at `now`, or None while another holder's lease is live: the one rule
    every Coordination adapter applies inside its atomic step. The fencing token grows only when the holder
    changes (a renewal, or the same holder coming back after its lease lapsed, keeps it)."""
    if current is not None and current.holder != holder and current.live_at(now):
        return None
    if current is None:
        token = 1
    elif current.holder == holder:
        token = current.token
    else:
        token = current.token + 1
    return Lease(name, holder, now + ttl_s, token)
