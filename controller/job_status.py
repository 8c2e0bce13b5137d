"""A tenant's questions about its jobs (broker/queries.py), answered from what only the fleet
reads: the job state, the leases, the queue and the events.

``job_status`` decides from the gathered facts (pure); ``JobQueries`` gathers them. A job's
facts are read one after another, not at one instant, so a job that moves on while it is looked
at can show its older state; the next ask shows the newer one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import nats.errors
from loguru import logger
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from broker.dispatch import Lease
from broker.events import (
    Cancelled,
    Event,
    Failed,
    Progress,
    Queued,
    Started,
    Succeeded,
    event_from_msg,
)
from broker.jobstate import JobStates
from broker.queries import (
    JobsQuery,
    JobsReply,
    JobState,
    JobStatus,
    JobStatusReply,
    decode_jobs_query,
)
from broker.subjects import (
    EVENTS_STREAM,
    JOBS_CONSUMER,
    JOBS_STREAM,
    WEBHOOK_JOBS_BUCKET,
    event_subject,
    parse_event_subject,
    validate_job_id,
    validate_tenant,
)
from broker.webhooks import WebhookAttempt, attempts_key, decode_attempts
from controller.dead_letters import DeadLetters
from controller.gateway import stored_job
from controller.job_costs import JobCosts, lease_cost
from controller.leases import LeaseBook

__all__ = ["Facts", "JobQueries", "job_status"]

_MAX_LIMIT = 500
_MAX_SCANNED = 2000  # the newest jobs of the window a listing looks at
_MAX_SINCE_S = 86400.0
_CONCURRENCY = 16

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Facts:
    job_id: str
    now: float
    state: Event | None = None  # the job-state entry: the last start, or the outcome
    lease: Lease | None = None  # the attempt holding it now
    queued_seq: int | None = None  # its message in JOBS, if it is there
    queued: Queued | None = None  # its queued event (operation, when stored)
    progress: Progress | None = None  # its last progress event
    delivered_seq: int = 0  # the last stream sequence the JOBS consumer handed out
    gaps: frozenset[int] = frozenset()  # sequences deleted from JOBS (acked, cancelled)
    webhooks: tuple[WebhookAttempt, ...] = ()  # attempts to deliver its outcome
    earlier_cost: float = 0.0  # the machine time of its attempts that ended, in $
    dead_letter: bool = False  # it failed for good and is kept (it can be run again)


def job_status(f: Facts) -> JobStatus | None:
    """Where the job is, or None when nothing knows it."""
    state = f.state
    if isinstance(state, Succeeded):
        return _made(f, "succeeded", state.operation, attempt=state.attempt,
                     started_at=state.at - state.timings.total_s, ended_at=state.at,
                     agent_id=state.agent_id, encoder=state.encoder, percent=100.0,
                     cost_usd=state.cost_usd, output=state.output)
    if isinstance(state, Failed):
        return _made(f, "failed", state.operation, ended_at=state.at, attempt=state.attempt,
                     agent_id=state.agent_id, encoder=state.encoder, error=state.error,
                     cost_usd=state.cost_usd, dead_letter=f.dead_letter)
    if isinstance(state, Cancelled):
        return _made(f, "cancelled", state.operation, ended_at=state.at,
                     attempt=state.attempt, agent_id=state.agent_id, cost_usd=state.cost_usd,
                     reason=state.reason)
    started = state if isinstance(state, Started) else None
    if (lease := f.lease) is not None:
        this = started if started is not None and started.attempt == lease.attempt else None
        progress = f.progress if f.progress and f.progress.attempt == lease.attempt else None
        return _made(f, "running", lease.operation, attempt=lease.attempt,
                     started_at=this.at if this else lease.granted_at,
                     agent_id=lease.agent_id, encoder=this.encoder if this else "",
                     percent=progress.percent if progress else None,
                     cost_usd=round(f.earlier_cost + lease_cost(lease, f.now), 6))
    if f.queued_seq is None and f.queued is None:
        return None
    position = None
    if f.queued_seq is not None and f.queued_seq > f.delivered_seq:  # not handed out yet
        position = f.queued_seq - f.delivered_seq - sum(
            1 for gap in f.gaps if f.delivered_seq < gap < f.queued_seq)
    if started is not None:  # an attempt ran and ended without an outcome
        return _made(f, "waiting", started.operation, started_at=started.at,
                     attempt=started.attempt, agent_id=started.agent_id,
                     encoder=started.encoder, position=position,
                     cost_usd=round(f.earlier_cost, 6))
    return _made(f, "queued", "", position=position, cost_usd=round(f.earlier_cost, 6))


def _made(f: Facts, state: JobState, operation: str, **fields: Any) -> JobStatus:
    return JobStatus(job_id=f.job_id, state=state,
                     operation=operation or (f.queued.operation if f.queued else ""),
                     queued_at=f.queued.at if f.queued else None,
                     webhooks=list(f.webhooks), **fields)


class JobQueries:
    def __init__(self, *, js: JetStreamContext, nc: Client, states: JobStates, book: LeaseBook,
                 costs: JobCosts, letters: DeadLetters,
                 clock: Callable[[], float] = time.time) -> None:
        self._js = js
        self._letters = letters
        self._costs = costs
        self._nc = nc
        self._hooks_kv: KeyValue | None = None
        self._states = states
        self._book = book
        self._clock = clock

    @property
    def _hooks(self) -> KeyValue:
        assert self._hooks_kv is not None, "open() first"
        return self._hooks_kv

    async def open(self) -> None:
        self._hooks_kv = await self._js.key_value(WEBHOOK_JOBS_BUCKET)

    async def answer(self, subject: str, body: bytes) -> JobStatusReply | JobsReply:
        """One ``query.<tenant>.job.<job_id>`` (a JobStatusReply) or ``query.<tenant>.jobs``
        (a JobsReply)."""
        parts = subject.split(".")
        listing = len(parts) == 3 and parts[2] == "jobs"
        failed = JobsReply if listing else JobStatusReply
        try:
            validate_tenant(parts[1])
            if listing:
                return await self.jobs(parts[1], decode_jobs_query(body))
            if len(parts) == 4 and parts[2] == "job":
                return await self.status(parts[1], validate_job_id(parts[3]))
        except ValueError as exc:  # a bad id or query (msgspec's errors are ValueErrors)
            return failed(ok=False, code="invalid", message=str(exc))
        except (nats.errors.Error, TimeoutError) as exc:
            logger.warning("query {subject} failed: {error}", subject=subject,
                           error=str(exc) or type(exc).__name__)
            return failed(ok=False, code="unavailable",
                          message="the fleet's records did not answer; ask again")
        return failed(ok=False, code="invalid", message=(
            "ask on query.<tenant>.job.<job_id> or query.<tenant>.jobs"))

    async def status(self, tenant: str, job_id: str,
                     queued: Queued | None = None) -> JobStatusReply:
        facts = await self._facts(tenant, job_id, (0, frozenset()), queued)
        if facts.queued_seq is not None and facts.lease is None and not isinstance(
                facts.state, (Succeeded, Failed, Cancelled)):  # its place is asked for
            delivered, gaps = await self._queue()
            facts = dataclasses.replace(facts, delivered_seq=delivered, gaps=gaps)
        status = job_status(facts)
        if status is None:
            return JobStatusReply(ok=False, code="not_found",
                                  message=f"no job {job_id!r} of tenant {tenant!r}")
        return JobStatusReply(ok=True, status=status)

    async def jobs(self, tenant: str, query: JobsQuery) -> JobsReply:
        limit = max(1, min(query.limit, _MAX_LIMIT))
        recent, scanned_all = await self._recent(tenant, min(query.since_s, _MAX_SINCE_S))
        queue = await self._queue()
        gate = asyncio.Semaphore(_CONCURRENCY)

        async def one(queued: Queued) -> JobStatus | None:
            async with gate:
                return job_status(await self._facts(tenant, queued.job_id, queue, queued))

        found: list[JobStatus] = []
        # A job run again from its dead letter was queued twice: its newest queued counts.
        latest = {q.job_id: q for q in recent}  # oldest first: the newest of each stays
        newest_first = sorted(latest.values(), key=lambda q: -q.at)
        for start in range(0, len(newest_first), _CONCURRENCY * 4):
            batch = await asyncio.gather(*(one(q) for q in newest_first[
                start:start + _CONCURRENCY * 4]))
            found += [s for s in batch if s is not None and (
                query.state is None or s.state == query.state)]
            if len(found) > limit:
                break
        return JobsReply(ok=True, jobs=found[:limit],
                         truncated=len(found) > limit or not scanned_all)

    async def _facts(self, tenant: str, job_id: str, queue: tuple[int, frozenset[int]],
                     queued: Queued | None) -> Facts:
        held = max(self._book.holders_of(tenant, job_id),
                   key=lambda h: h.lease.attempt, default=None)  # the newest attempt
        stored = await stored_job(self._js, tenant, job_id)
        state = await self._states.get(tenant, job_id)
        return Facts(job_id=job_id, now=self._clock(), state=state,
                     dead_letter=isinstance(state, Failed)
                     and await self._letters.get(tenant, job_id) is not None,
                     lease=held.lease if held else None,
                     queued_seq=stored[0] if stored else None,
                     queued=queued or _only(Queued, await self._last(tenant, job_id,
                                                                     "queued")),
                     progress=_only(Progress, await self._last(tenant, job_id, "progress")),
                     delivered_seq=queue[0], gaps=queue[1],
                     webhooks=await self._webhooks(tenant, job_id),
                     earlier_cost=(await self._costs.get(tenant, job_id)).cost_usd)

    async def _webhooks(self, tenant: str, job_id: str) -> tuple[WebhookAttempt, ...]:
        try:
            entry = await self._hooks.get(attempts_key(tenant, job_id))
            return tuple(decode_attempts(entry.value or b"[]"))
        except (KeyNotFoundError, NotFoundError, ValueError):
            return ()

    async def _queue(self) -> tuple[int, frozenset[int]]:
        """The last sequence handed out, and the sequences missing from JOBS (nats-py's
        stream info cannot ask for the deleted ones)."""
        info = await self._js.consumer_info(JOBS_STREAM, JOBS_CONSUMER)
        answer = await self._nc.request(f"$JS.API.STREAM.INFO.{JOBS_STREAM}",
                                        b'{"deleted_details": true}', timeout=5.0)
        deleted = json.loads(answer.data).get("state", {}).get("deleted") or []
        return (info.delivered.stream_seq if info.delivered else 0), frozenset(deleted)

    async def _last(self, tenant: str, job_id: str, kind: str) -> Event | None:
        try:
            msg = await self._js.get_last_msg(
                EVENTS_STREAM, event_subject(tenant, job_id, kind, "*"), direct=True)
        except NotFoundError:
            return None
        try:
            return event_from_msg(msg.subject or "", msg.headers, msg.data or b"")
        except ValueError:
            return None

    async def _recent(self, tenant: str, since_s: float) -> tuple[list[Queued], bool]:
        """The tenant's queued events of the last ``since_s`` seconds, oldest first (the
        newest ``_MAX_SCANNED``), and whether that is all of them."""
        start = self._clock() - since_s
        info = await self._js.add_consumer(EVENTS_STREAM, ConsumerConfig(
            filter_subject=event_subject(tenant, "*", "queued", "*"),
            deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.fromtimestamp(start, UTC),
            ack_policy=AckPolicy.NONE, headers_only=True, mem_storage=True,
            inactive_threshold=30.0))
        sub = await self._js.pull_subscribe_bind(consumer=info.name, stream=EVENTS_STREAM)
        newest: collections.deque[Queued] = collections.deque(maxlen=_MAX_SCANNED)
        seen = 0
        try:
            pending = info.num_pending or 0
            while pending > 0:
                try:
                    msgs = await sub.fetch(min(pending, 256), timeout=2.0)
                except (nats.errors.TimeoutError, TimeoutError):
                    break
                for msg in msgs:
                    pending = msg.metadata.num_pending
                    seen += 1
                    with contextlib.suppress(ValueError):
                        parse_event_subject(msg.subject)
                        event = event_from_msg(msg.subject, msg.headers, b"")
                        if isinstance(event, Queued):
                            newest.append(event)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
                await self._js.delete_consumer(EVENTS_STREAM, info.name)
        return list(newest), seen <= _MAX_SCANNED


def _only(kind: type[T], event: Event | None) -> T | None:
    return event if isinstance(event, kind) else None
