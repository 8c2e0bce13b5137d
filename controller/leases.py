"""Which agent holds which job: the dispatcher's lease book, in memory and in KV ``leases``.

One record per agent slot (an agent holds at most one job per slot; most have one slot, and
their key is the agent id). The KV copy lets a restarted controller
go on with the jobs in hand instead of letting their deliveries lapse. A lease counts as live
while its holder was heard from within ``ack_wait``: past that JetStream has redelivered (or
will redeliver) the job, so neither the heartbeat check nor the backlog may count on it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ObjectInfo
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from broker.dead_letters import requeue_offsets
from broker.dispatch import Grant, Lease, decode_lease, encode
from broker.events import OutputInfo
from broker.jobs import inputs_named
from broker.object_writes import ObjectWriter
from broker.result_cache import CACHE_KEY_HEADER
from broker.stores import kv_keys
from broker.subjects import LEASES_BUCKET

__all__ = ["Held", "LeaseBook", "Reading", "grant_of", "lease_key", "lease_of"]


@dataclass
class Reading:
    """One input being read by the holder: its chunks, read ahead in batches."""

    info: ObjectInfo
    chunks: AsyncGenerator[bytes, None]
    position: int = 0  # the index of the next chunk

    async def close(self) -> None:
        await self.chunks.aclose()


@dataclass
class Held:
    """A lease and what its holder has under way."""

    lease: Lease
    heard_at: float  # the last message from the holder (monotonic)
    upload: ObjectWriter | None = None
    stored: OutputInfo | None = None  # the committed result (a retried report reuses it)
    reading: dict[str, Reading] = field(default_factory=dict)  # inputs being read
    started: bool = False  # one started event per lease
    progress_at: float = float("-inf")  # the last progress event published (monotonic)


class LeaseBook:
    @classmethod
    async def open(cls, js: JetStreamContext, **kwargs: Any) -> LeaseBook:
        """The book on the ``leases`` bucket (``kwargs``: as ``__init__``'s)."""
        return cls(await js.key_value(LEASES_BUCKET),
                   list_keys=lambda: kv_keys(js, LEASES_BUCKET), **kwargs)

    def __init__(self, kv: KeyValue, *, ack_wait_s: float,
                 list_keys: Callable[[], Awaitable[list[str]]],
                 on_end: Callable[[Lease, float], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """``on_end(lease, ended_at)`` is told of each lease that ends, and when (its holder's
        last word, on the wall clock): what its machine time is charged from.
        ``list_keys``: the bucket's keys (broker/stores.py ``kv_keys``)."""
        self._kv = kv
        self._list_keys = list_keys
        self._on_end = on_end
        self._clock = clock
        self._mono = monotonic
        self.ack_wait_s = ack_wait_s
        self._held: dict[str, Held] = {}  # lease_key(agent id, slot) -> its job

    def __len__(self) -> int:
        return len(self._held)

    async def load(self) -> None:
        """The leases a previous dispatcher left, as if each holder had just been heard."""
        for key in await self._list_keys():
            try:
                entry = await self._kv.get(key)
                lease = decode_lease(entry.value or b"")
            except (KeyNotFoundError, ValueError) as exc:
                logger.warning("lease {key} unreadable ({error}); dropped", key=key,
                               error=str(exc))
                await self._forget(key)
                continue
            self._held[_key(lease)] = Held(lease, heard_at=self._mono())

    async def grant(self, lease: Lease) -> None:
        """Record a lease (on disk first: a crash after the grant must not lose it)."""
        await self._kv.put(_key(lease), encode(lease))
        self._held[_key(lease)] = Held(lease, heard_at=self._mono())

    def holder(self, agent_id: str, tenant: str, job_id: str) -> Held | None:
        """``agent_id``'s lease on that job, in whichever slot; None for anything else."""
        for held in self._held.values():
            lease = held.lease
            if (lease.agent_id, lease.tenant, lease.job_id) == (agent_id, tenant, job_id):
                return held
        return None

    def holders_of(self, tenant: str, job_id: str) -> list[Held]:
        return [held for held in self._held.values()
                if (held.lease.tenant, held.lease.job_id) == (tenant, job_id)]

    async def void(self, tenant: str, job_id: str) -> list[int]:
        """End the leases on a job that came back (their holders went quiet); their
        attempts."""
        attempts = []
        for held in self.holders_of(tenant, job_id):
            logger.warning("job {tenant}/{job_id} came back from {agent}, gone quiet: its "
                           "lease is void", tenant=tenant, job_id=job_id, agent=_key(held.lease))
            attempts.append(held.lease.attempt)
            await self.drop(held.lease)
        return attempts

    def holders(self) -> frozenset[str]:
        """The agents holding a lease, live or not."""
        return frozenset(held.lease.agent_id for held in self._held.values())

    def held_jobs(self, agent_id: str) -> list[str]:
        """The job ids ``agent_id`` holds right now, in any slot (live leases)."""
        return [held.lease.job_id for held in self._held.values()
                if held.lease.agent_id == agent_id and self._live(held)]

    def live_leases(self) -> list[Lease]:
        return [held.lease for held in self._held.values() if self._live(held)]

    def running_for_s(self, now: float) -> list[float]:
        """How long each live lease has been held, at wall-clock ``now``."""
        return [max(0.0, now - held.lease.granted_at) for held in self._held.values()
                if self._live(held)]

    def stale(self, silent_for_s: float) -> list[Held]:
        """Leases whose holders were not heard from for ``silent_for_s``."""
        now = self._mono()
        return [held for held in self._held.values() if now - held.heard_at > silent_for_s]

    async def forget_stale(self, silent_for_s: float) -> None:
        """Drop the leases of holders silent for ``silent_for_s``: such a holder lost its
        delivery long ago (the job ran elsewhere, or the reaper ended it)."""
        for held in self.stale(silent_for_s):
            logger.info("lease of {agent} forgotten: silent for over {s:.0f} s",
                        agent=_key(held.lease), s=silent_for_s)
            await self.drop(held.lease)

    def heard_wall(self, held: Held) -> float:
        """When its holder was last heard from, on the wall clock: where a lease whose
        holder vanished ends (the machine's time after that is no job's)."""
        return self._clock() - max(0.0, self._mono() - held.heard_at)

    async def hand_back(self, agent_id: str, slot: int, nc: Client) -> None:
        """End the lease in ``agent_id``'s ``slot`` now, its job back in the queue (the slot
        asked for another: one job per slot)."""
        if (held := self._held.get(lease_key(agent_id, slot))) is None:
            return
        logger.warning("{agent} asked for work while holding {tenant}/{job_id}; that job goes "
                       "back to the queue", agent=lease_key(agent_id, slot),
                       tenant=held.lease.tenant, job_id=held.lease.job_id)
        try:
            await nc.publish(held.lease.ack_subject, b"-NAK")
        except nats.errors.Error as exc:  # it comes back after ack_wait instead
            logger.warning("hand-back failed: {error}", error=str(exc))
        await self.drop(held.lease)

    async def drop(self, lease: Lease, ended_at: float | None = None) -> None:
        """End a lease: its machine time is added to its job's cost; its unfinished upload
        and reads go with it. ``ended_at``: the moment an outcome was priced at (the job's
        cost_usd), so that the job and the fleet's attribution count the same time; else
        its holder's last word. A lease already ended (its slot holding another now) is
        left alone."""
        key = _key(lease)
        held = self._held.get(key)
        if held is None or held.lease != lease:
            return
        del self._held[key]
        if self._on_end is not None:
            with contextlib.suppress(nats.errors.Error, RuntimeError):  # cost, not job
                await self._on_end(held.lease, ended_at if ended_at is not None
                                   else self.heard_wall(held))
        if held.upload is not None:
            await held.upload.abort()
        for reading in held.reading.values():
            await reading.close()
        await self._forget(key)

    def _live(self, held: Held) -> bool:
        return self._mono() - held.heard_at <= self.ack_wait_s

    async def _forget(self, key: str) -> None:
        with contextlib.suppress(KeyNotFoundError):
            await self._kv.delete(key)


def lease_key(agent_id: str, slot: int) -> str:
    """A lease's key, in memory and in KV: the agent id for slot 0 (every agent running one
    job at a time), ``<agent id>.<slot>`` past it."""
    return agent_id if slot == 0 else f"{agent_id}.{slot}"


def _key(lease: Lease) -> str:
    return lease_key(lease.agent_id, lease.slot)


def lease_of(job: Msg, *, tenant: str, operation: str, job_id: str, agent_id: str,
             price_per_hour: float, now: float, after: int = 0, slot: int = 0) -> Lease:
    """The lease of one delivery of a JOBS message to ``agent_id``: its attempt is the
    delivery's number, after the attempts of a retried dead letter (broker/dead_letters.py)
    and after ``after`` (the last attempt known to have started), so each attempt's result
    name stays its own."""
    attempts_before, _ = requeue_offsets(job.headers)
    meta = job.metadata
    return Lease(agent_id=agent_id, slot=slot, tenant=tenant, operation=operation,
                 job_id=job_id, attempt=max(attempts_before + meta.num_delivered, after + 1),
                 stream_seq=meta.sequence.stream, ack_subject=job.reply or "",
                 granted_at=now, inputs=inputs_named(operation, job.data),
                 price_per_hour=price_per_hour,
                 cache_key=(job.headers or {}).get(CACHE_KEY_HEADER, ""))


def grant_of(lease: Lease, job: Msg, *, max_deliver: int, failures: int,
             hold_every_s: float) -> Grant:
    """What the holder is told: ``failures`` (the job's retryable failures, all told) counted
    from the job's requeue, if it was one (a retried dead letter gets a fresh budget), and
    the number its last attempt will have: this one's plus the deliveries the server has
    left."""
    _, failures_before = requeue_offsets(job.headers)
    left = max(0, max_deliver - job.metadata.num_delivered)  # deliveries the server has left
    return Grant(tenant=lease.tenant, operation=lease.operation, job_id=lease.job_id,
                 attempt=lease.attempt, max_deliver=lease.attempt + left,
                 failures=max(0, failures - failures_before),
                 queued_at=job.metadata.timestamp.timestamp(), hold_every_s=hold_every_s,
                 body=job.data.decode("utf-8", errors="replace"))
