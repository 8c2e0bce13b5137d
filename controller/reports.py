"""What a holder says about its job, done: the job-state claim, the event, the lease renewal
and the ack, nak or term, by the controller on the holder's behalf.

The dispatcher has checked that the agent holds the job (controller/dispatcher.py). Every event
is rewritten from the lease (``as_holder``): its agent, attempt, tenant and operation are the
holder's, whatever the report claimed. What one lease can make the controller write is bounded:
one ``started``, progress at most ten a second, one outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
from loguru import logger
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from broker.dead_letters import scrub_log_tail
from broker.dispatch import Hold, Lease, Release, Report, ReportReply
from broker.events import (
    Event,
    Failed,
    Progress,
    Retrying,
    Started,
    Succeeded,
    encode_event,
)
from broker.jobstate import JobStates, ensure_announced, kind_of
from broker.subjects import CONTROLLER_PUBLISHER, JOBS_STREAM, event_subject
from controller.dead_letters import DeadLetters
from controller.job_costs import JobCosts, lease_cost
from controller.leases import Held, LeaseBook
from controller.result_cache import ResultCache
from controller.transfers import Transfers

__all__ = ["Reports", "as_holder"]

_MAX_RETRY_DELAY_S = 3600.0  # an agent's retry delay beyond this is cut to it
_MIN_PROGRESS_S = 0.1  # a holder's progress events beyond one per this are dropped


class Reports:
    def __init__(self, *, js: JetStreamContext, nc: Client, states: JobStates,
                 book: LeaseBook, transfers: Transfers, costs: JobCosts, letters: DeadLetters,
                 cache: ResultCache, clock: Callable[[], float] = time.time) -> None:
        self._js = js
        self._letters = letters
        self._cache = cache
        self._nc = nc
        self._states = states
        self._book = book
        self._transfers = transfers
        self._costs = costs
        self._clock = clock

    async def handle(self, held: Held, report: Report) -> ReportReply:
        """Act on one report from ``held``'s holder (its ``heard_at`` already updated)."""
        lease = held.lease
        if isinstance(report, Hold):
            await self._nc_publish(lease.ack_subject, b"+WPI")
            return ReportReply(ok=True)
        if isinstance(report, Release):
            await self._nc_publish(lease.ack_subject, b"-NAK")
            await self._book.drop(lease)
            return ReportReply(ok=True)
        event = as_holder(report, lease)
        if isinstance(event, Progress):
            await self._nc_publish(lease.ack_subject, b"+WPI")
            # Bounded, so a holder cannot flood EVENTS and push other jobs' history out.
            if held.heard_at - held.progress_at >= _MIN_PROGRESS_S:
                held.progress_at = held.heard_at
                await self._publish(event)
            return ReportReply(ok=True)
        if isinstance(event, Started):
            if held.started:
                return ReportReply(ok=False, code="invalid", message="already started")
            held.started = True
            return await self._started(held, event)
        if isinstance(event, Retrying):
            await self._publish(event)
            delay_ns = int(min(max(event.retry_in_s, 0.0), _MAX_RETRY_DELAY_S) * 1e9)
            await self._nc_publish(lease.ack_subject, b'-NAK {"delay": %d}' % delay_ns)
            await self._book.drop(lease)
            return ReportReply(ok=True)
        if isinstance(event, Succeeded):
            checked = await self._transfers.checked_output(held, event.output)
            if isinstance(checked, ReportReply):
                return checked
            event = msgspec.structs.replace(event, output=checked)
        assert isinstance(event, (Succeeded, Failed))
        ended_at = self._clock()  # the lease's end, for the job's cost and the fleet's books
        return await self._finish(held, await self._costed(held, event, ended_at), ended_at)

    async def _costed(self, held: Held, event: Succeeded | Failed,
                      ended_at: float) -> Succeeded | Failed:
        """The outcome with what the whole job cost: every earlier attempt's machine time and
        this one's until ``ended_at``, at the prices their work requests gave."""
        lease = held.lease
        earlier = await self._costs.get(lease.tenant, lease.job_id)
        total = earlier.cost_usd + lease_cost(lease, ended_at)
        return msgspec.structs.replace(event, price_per_hour=lease.price_per_hour,
                                       cost_usd=round(total, 6))

    async def _started(self, held: Held, event: Started) -> ReportReply:
        lease = held.lease
        if (existing := await self._states.record_started(event)) is not None:
            await ensure_announced(self._js, existing, CONTROLLER_PUBLISHER)
            await self._ack(lease)
            await self._book.drop(lease)
            return ReportReply(ok=False, code="already_ended",
                               message=f"the job already {type(existing).__name__.lower()}")
        await self._publish(event)
        await self._nc_publish(lease.ack_subject, b"+WPI")
        return ReportReply(ok=True)

    async def _finish(self, held: Held, event: Succeeded | Failed,
                      ended_at: float) -> ReportReply:
        """Claim the job's outcome, announce it, then ack: a crash between them repeats an
        announcement (skipped when present), never loses one."""
        lease = held.lease
        winner = await self._states.claim_terminal(event)
        if winner is None:
            await self._publish(event)
            if isinstance(event, Succeeded):
                await self._cache.record(lease, event)
        elif _same_attempt(winner, event):  # this report, sent again after its answer was lost
            await ensure_announced(self._js, event, lease.agent_id)
        else:
            logger.warning("{agent}'s outcome for {job_id} dropped: {other} ended it first",
                           agent=lease.agent_id, job_id=event.job_id, other=winner.agent_id)
        if isinstance(event, Failed) and (winner is None or _same_attempt(winner, event)):
            await self._keep(lease, event)
        if isinstance(event, Succeeded) or winner is not None:
            await self._ack(lease)
        else:
            await self._nc_publish(lease.ack_subject, b"+TERM")
        await self._book.drop(lease, ended_at)
        return ReportReply(ok=True)


    async def _keep(self, lease: Lease, failed: Failed) -> None:
        """A job failed for good becomes a dead letter, before its message leaves JOBS (the
        only copy of its body)."""
        try:
            job = await self._js.get_msg(JOBS_STREAM, lease.stream_seq)
            body, headers = job.data or b"", job.headers
        except NotFoundError:  # gone already: kept by an earlier try of this report, or lost
            body, headers = None, None
        await self._letters.keep(operation=lease.operation, body=body, headers=headers,
                                 failed=failed)

    async def _ack(self, lease: Lease) -> None:
        """An ack the server confirms (as nats-py's ``ack_sync``)."""
        await self._nc.request(lease.ack_subject, b"+ACK", timeout=5.0)

    async def _nc_publish(self, subject: str, data: bytes) -> None:
        """An ack-family message (+WPI, -NAK, +TERM) on a delivery's reply subject."""
        await self._nc.publish(subject, data)

    async def _publish(self, event: Event) -> None:
        """Under the holder's id, without ``Nats-Msg-Id`` (one outcome per job is kept by
        the job state's compare-and-set, not by the stream's dedupe)."""
        kind = kind_of(event)
        agent_id = getattr(event, "agent_id", CONTROLLER_PUBLISHER)
        await self._js.publish(event_subject(event.tenant, event.job_id, kind, agent_id),
                               encode_event(event))


def _same_attempt(a: Event, b: Event) -> bool:
    """The same attempt's outcome (a report sent again carries a later cost)."""
    return (kind_of(a), getattr(a, "agent_id", ""), getattr(a, "attempt", 0)) == (
        kind_of(b), getattr(b, "agent_id", ""), getattr(b, "attempt", 0))


def as_holder(report: Report, lease: Lease) -> Event:
    """The event as the lease says it is: its agent, attempt, tenant and operation are the
    holder's, whatever the body claimed."""
    assert not isinstance(report, (Hold, Release))
    fields: dict[str, object] = {"agent_id": lease.agent_id, "attempt": lease.attempt,
                                 "tenant": lease.tenant}
    if isinstance(report, (Retrying, Failed)):  # kept and shown: the holder's text, scrubbed
        fields["error"] = msgspec.structs.replace(
            report.error, stderr_tail=scrub_log_tail(report.error.stderr_tail))
    if isinstance(report, (Started, Succeeded, Failed)):
        fields["operation"] = lease.operation
    return msgspec.structs.replace(report, **fields)
