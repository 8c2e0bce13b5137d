"""What each job's attempts have cost so far: KV ``jobcost``, key ``<tenant>.<job_id>``.

Every attempt runs on a machine someone pays for, from the moment the dispatcher leases the job
to the moment the lease ends (an outcome, a retry, a hand-back, a cancel, or the last time a
holder that vanished was heard from), at the price the holder's work request gave. The
dispatcher adds each ended lease here, so a job's outcome can carry the cost of all its
attempts, not only the last one's: a job that failed three times before it succeeded cost four
machine-times.
"""

from __future__ import annotations

import msgspec
from msgspec import Struct
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker.dispatch import Lease
from broker.subjects import job_key

__all__ = ["JobCost", "JobCosts", "lease_cost"]

_CAS_ATTEMPTS = 20


class JobCost(Struct, frozen=True, kw_only=True):
    attempts: int = 0  # leases that ended
    cost_usd: float = 0.0


_DECODER = msgspec.json.Decoder(JobCost)
_ENCODER = msgspec.json.Encoder()


def lease_cost(lease: Lease, ended_at: float, since: float = 0.0) -> float:
    """The machine time of one lease until ``ended_at`` (from ``since``, if after its grant),
    at its holder's price, in dollars."""
    return max(0.0, ended_at - max(since, lease.granted_at)) * lease.price_per_hour / 3600.0


class JobCosts:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def get(self, tenant: str, job_id: str) -> JobCost:
        try:
            entry = await self._kv.get(job_key(tenant, job_id))
            return _DECODER.decode(entry.value or b"{}")
        except (KeyNotFoundError, ValueError):
            return JobCost()

    async def add(self, lease: Lease, ended_at: float) -> None:
        """Add one ended lease (compare-and-set: two ends at once both count)."""
        key = job_key(lease.tenant, lease.job_id)
        cost = lease_cost(lease, ended_at)
        for _ in range(_CAS_ATTEMPTS):
            try:
                entry = await self._kv.get(key)
            except KeyNotFoundError:
                current, revision = JobCost(), None
            else:
                revision = entry.revision
                try:
                    current = _DECODER.decode(entry.value or b"{}")
                except ValueError:  # unreadable: counted again from here
                    current = JobCost()
            new = _ENCODER.encode(JobCost(attempts=current.attempts + 1,
                                          cost_usd=current.cost_usd + cost))
            try:
                if revision is None:
                    await self._kv.create(key, new)
                else:
                    await self._kv.update(key, new, last=revision)
                return
            except KeyWrongLastSequenceError:
                continue
        raise RuntimeError(f"the cost of {key} kept changing; this lease was not added")
