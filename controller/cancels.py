"""Cancel: a tenant's ``cancel.<tenant>.<job_id>``, answered by the dispatcher.

The job state's compare-and-set decides, as it does between two attempts that both finish: a
cancel that claims the outcome before the job's own outcome wins, and the other is dropped, so
a cancel racing a finish ends in exactly one terminal event. Then, in this order:
- the ``cancelled`` event is published (by the controller, under ``controller``);
- a job in an agent's hands: its delivery is acked (it will not run again), its lease ends
  (an unfinished or unreported result is deleted with it) and the agent is told on
  ``agents.<id>.control`` to kill the job now. An agent that misses that message learns at its
  next hold (``not_holder``), within a third of ``ack_wait``. The machine's time from the grant
  until now, at the price the agent's work request gave, is charged to the job;
- a queued job (or one waiting out a retry delay): its message is deleted from JOBS, so it
  leaves the backlog at once. If the dispatcher fetched it in between, the grant's ``started``
  meets the outcome and the agent runs nothing.

Only the tenant in the subject can be named (the server lets each tenant account publish only
its own), so a tenant can cancel only its own jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import nats.errors
from loguru import logger
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from broker.events import Cancelled, encode_event
from broker.fleet import AgentCommand
from broker.fleet import encode as encode_fleet
from broker.jobstate import JobStates, kind_of
from broker.objects import delete_object
from broker.subjects import (
    CONTROLLER_PUBLISHER,
    EVENTS_STREAM,
    JOBS_STREAM,
    agent_control_subject,
    event_subject,
)
from broker.submit import CancelReply
from controller.gateway import stored_job
from controller.job_costs import JobCosts, lease_cost
from controller.leases import Held, LeaseBook

__all__ = ["Cancels"]

_MAX_REASON = 500

# One holder's messages are handled in order under its lock (controller/holders.py); a cancel
# takes the same lock, so it never lands between a report's claim and its ack.
HolderLock = Callable[[str], asyncio.Lock]


class Cancels:
    def __init__(self, *, js: JetStreamContext, nc: Client, states: JobStates, book: LeaseBook,
                 costs: JobCosts, holder_lock: HolderLock,
                 clock: Callable[[], float] = time.time) -> None:
        self._js = js
        self._costs = costs
        self._nc = nc
        self._states = states
        self._book = book
        self._lock = holder_lock
        self._clock = clock

    async def cancel(self, tenant: str, job_id: str, reason: str) -> CancelReply:
        reason = reason[:_MAX_REASON]
        if (ended := await self._states.terminal(tenant, job_id)) is not None:
            return _already(job_id, kind_of(ended))
        held = self._book.holders_of(tenant, job_id)
        if held:
            # The newest lease is the attempt that runs (an older one's holder went quiet).
            newest = max(held, key=lambda h: h.lease.attempt)
            async with self._lock(newest.lease.agent_id):
                still = self._book.holder(newest.lease.agent_id, tenant, job_id) is newest
                reply = await self._cancel_running(newest, reason) if still else None
            if reply is not None:
                if reply.ok:
                    now_held = self._book.holders_of(tenant, job_id)
                    for stale in held:
                        if stale is not newest and any(h is stale for h in now_held):
                            await self._stop_holder(stale, reason)
                return reply
        queued = await stored_job(self._js, tenant, job_id)
        if queued is None and not await self._has_events(tenant, job_id):
            return CancelReply(ok=False, job_id=job_id, code="not_found",
                               message=f"no job {job_id!r} of tenant {tenant!r}")
        operation = queued[1] if queued else ""
        earlier = await self._costs.get(tenant, job_id)  # attempts before (a retry's wait)
        event = Cancelled(job_id=job_id, tenant=tenant, at=self._clock(), reason=reason,
                          operation=operation, cost_usd=round(earlier.cost_usd, 6))
        if (winner := await self._states.claim_terminal(event)) is not None:
            return _already(job_id, kind_of(winner))
        await self._announce(event)
        for granted in self._book.holders_of(tenant, job_id):  # granted in the meantime
            await self._stop_holder(granted, reason)
        if queued is not None:
            with contextlib.suppress(NotFoundError):  # fetched meanwhile: its start is refused
                await self._js.delete_msg(JOBS_STREAM, queued[0])
        logger.bind(tenant=tenant, job_id=job_id).info("job cancelled before it ran")
        return CancelReply(ok=True, job_id=job_id, state="cancelled")

    async def _cancel_running(self, held: Held, reason: str) -> CancelReply:
        lease = held.lease
        now = self._clock()
        earlier = await self._costs.get(lease.tenant, lease.job_id)
        event = Cancelled(
            job_id=lease.job_id, tenant=lease.tenant, at=now, reason=reason,
            operation=lease.operation, agent_id=lease.agent_id, attempt=lease.attempt,
            price_per_hour=lease.price_per_hour,
            cost_usd=round(earlier.cost_usd + lease_cost(lease, now), 6))
        if (winner := await self._states.claim_terminal(event)) is not None:
            return _already(lease.job_id, kind_of(winner))
        await self._announce(event)
        await self._stop_holder(held, reason, ended_at=now)
        logger.bind(tenant=lease.tenant, job_id=lease.job_id, agent_id=lease.agent_id).info(
            "job cancelled while {agent} ran it (attempt {n})", agent=lease.agent_id,
            n=lease.attempt)
        return CancelReply(ok=True, job_id=lease.job_id, state="cancelled", was_running=True)

    async def _stop_holder(self, held: Held, reason: str,
                           ended_at: float | None = None) -> None:
        """The delivery acked, the lease and its result gone, the agent told to stop.
        ``ended_at``: when the cancel priced the job (its lease ends there in every book)."""
        lease = held.lease
        try:
            await self._nc.request(lease.ack_subject, b"+ACK", timeout=5.0)
        except (nats.errors.Error, TimeoutError) as exc:
            # Redelivered after ack_wait, then acked at once: the job state says cancelled.
            logger.warning("ack of cancelled {job_id} failed: {error}", job_id=lease.job_id,
                           error=str(exc) or type(exc).__name__)
        if held.stored is not None:  # uploaded, never reported: nobody will fetch it
            await delete_object(self._js, held.stored.bucket, held.stored.name)
        await self._book.drop(lease, ended_at)  # an unfinished upload goes too
        with contextlib.suppress(nats.errors.Error):
            await self._nc.publish(agent_control_subject(lease.agent_id), encode_fleet(
                AgentCommand(command="cancel", reason=reason, tenant=lease.tenant,
                             job_id=lease.job_id)))

    async def _announce(self, event: Cancelled) -> None:
        await self._js.publish(
            event_subject(event.tenant, event.job_id, kind_of(event), CONTROLLER_PUBLISHER),
            encode_event(event))

    async def _has_events(self, tenant: str, job_id: str) -> bool:
        try:
            await self._js.get_last_msg(EVENTS_STREAM, event_subject(tenant, job_id, "*", "*"),
                                        direct=True)
        except NotFoundError:
            return False
        return True


def _already(job_id: str, state: str) -> CancelReply:
    return CancelReply(ok=False, job_id=job_id, state=state, code="already_ended",
                       message=f"the job already {state}")

