"""What an agent tells the world about a job: events on the bus and the job-state entry.

Terminal events go through ``JobStates.claim_terminal`` first, so of two attempts that both
finish (a machine whose lease lapsed while it was frozen, then woke) only the first is ever
published: a client never sees two outcomes, however far apart they come.
"""

from __future__ import annotations

import nats.errors
from nats.js import JetStreamContext

from broker.events import Event, Retrying, Started, encode_event
from broker.jobstate import JobStates, Terminal, ensure_announced
from broker.subjects import EVENTS_STREAM, event_subject

__all__ = ["Reporter"]


def _kind(event: Event) -> str:
    return str(type(event).__struct_config__.tag)



class Reporter:
    def __init__(self, js: JetStreamContext, states: JobStates, agent_id: str) -> None:
        self._js = js
        self._states = states
        self._agent_id = agent_id

    async def terminal(self, tenant: str, job_id: str) -> Terminal | None:
        return await self._states.terminal(tenant, job_id)

    async def started(self, event: Started) -> Terminal | None:
        """Record and announce an attempt; returns the job's outcome instead if it has one."""
        existing = await self._states.record_started(event)
        if existing is None:
            await self._publish(event)
        return existing

    async def retrying(self, event: Retrying) -> None:
        await self._publish(event)

    async def finish(self, event: Terminal) -> Terminal | None:
        """Claim and announce the job's outcome. Returns the outcome another attempt claimed
        first, in which case nothing is published."""
        winner = await self._states.claim_terminal(event)
        if winner is None:
            await self._publish(event)
        return winner

    async def ensure_published(self, outcome: Terminal) -> None:
        """Publish a claimed outcome that may never have reached EVENTS, under this agent's
        own id: it may publish no other."""
        await ensure_announced(self._js, outcome, self._agent_id)

    async def failures_so_far(self, tenant: str, job_id: str) -> int:
        """Retryable failures of this job so far, from its stored ``retrying`` events."""
        try:
            info = await self._js.stream_info(
                EVENTS_STREAM,
                subjects_filter=event_subject(tenant, job_id, "retrying", "*"))
        except nats.errors.Error:
            return 0
        return sum((info.state.subjects or {}).values())

    async def _publish(self, event: Event) -> None:
        """No ``Nats-Msg-Id``: duplicate detection is per stream, so an agent could publish
        a message with the id a job's outcome would carry and have the real one dropped.
        One outcome per job is kept by the job state's compare-and-set, not by the stream."""
        subject = event_subject(event.tenant, event.job_id, _kind(event), self._agent_id)
        await self._js.publish(subject, encode_event(event))
