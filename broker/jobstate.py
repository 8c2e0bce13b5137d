"""The job-state KV: one entry per job (key ``<tenant>.<job_id>``) holding its latest lifecycle
event, with the terminal state claimed by compare-and-set.

Exactly one terminal event per job is the contract with clients. Two attempts can both finish
(a frozen machine whose lease lapsed wakes up after another machine ran the job), and they may
finish minutes apart, far outside any publish dedupe window; and a cancel can race a finish. So
before anyone publishes ``succeeded``, ``failed`` or ``cancelled`` it must win ``claim_terminal``;
the loser stays silent. A terminal entry is never overwritten, so a late ``started`` cannot make
a finished job look runnable.
"""

from __future__ import annotations

import nats.errors
from loguru import logger
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from broker.events import (
    Cancelled,
    Event,
    Failed,
    Requeued,
    Started,
    Succeeded,
    decode_event,
    encode_event,
)
from broker.subjects import EVENTS_STREAM, event_subject, job_key

__all__ = ["TERMINAL", "JobStates", "Terminal", "ensure_announced", "kind_of",
           "retryable_failures"]

Terminal = Succeeded | Failed | Cancelled
TERMINAL = (Succeeded, Failed, Cancelled)
_CAS_ATTEMPTS = 20


class JobStates:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def get(self, tenant: str, job_id: str) -> Event | None:
        current, _ = await self._read(job_key(tenant, job_id))
        return current

    async def terminal(self, tenant: str, job_id: str) -> Terminal | None:
        current, _ = await self._read(job_key(tenant, job_id))
        return current if isinstance(current, TERMINAL) else None

    async def record_started(self, event: Started) -> Terminal | None:
        """Record an attempt's start; returns the terminal state instead if the job has one."""
        return await self._write_unless_terminal(event)

    async def claim_terminal(self, event: Terminal) -> Terminal | None:
        """Make ``event`` the job's outcome. Returns None when claimed; otherwise the outcome
        that was there first, and the caller must not publish its own."""
        return await self._write_unless_terminal(event)

    async def requeue(self, event: Requeued) -> bool:
        """Make a failed job runnable again: its ``Failed`` (the one ending attempt
        ``event.attempts_before``, or an expired entry) is replaced by ``event``, by
        compare-and-set. True when the job is requeued now (or was already, by this same
        requeue); False when its state is anything else, and nothing is written."""
        key = job_key(event.tenant, event.job_id)
        for _ in range(_CAS_ATTEMPTS):
            current, revision = await self._read(key)
            if isinstance(current, Requeued):
                return current.attempts_before == event.attempts_before
            if current is not None and not (
                    isinstance(current, Failed) and current.attempt <= event.attempts_before):
                return False
            try:
                if revision is None:
                    await self._kv.create(key, encode_event(event))
                else:
                    await self._kv.update(key, encode_event(event), last=revision)
                return True
            except KeyWrongLastSequenceError:
                continue
        raise RuntimeError(f"job state of {key} kept changing; gave up requeueing it")

    async def _read(self, key: str) -> tuple[Event | None, int | None]:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None, None
        if not entry.value:
            return None, entry.revision
        try:
            return decode_event(entry.value), entry.revision
        except ValueError as exc:  # unreadable: treated as no state, and overwritten
            logger.error("job state {key} is unreadable ({error}); ignored", key=key,
                         error=str(exc))
            return None, entry.revision

    async def _write_unless_terminal(self, event: Event) -> Terminal | None:
        data = encode_event(event)
        key = job_key(event.tenant, event.job_id)
        for _ in range(_CAS_ATTEMPTS):
            current, revision = await self._read(key)
            if isinstance(current, TERMINAL):
                return current
            try:
                if revision is None:
                    await self._kv.create(key, data)
                else:
                    await self._kv.update(key, data, last=revision)
                return None
            except KeyWrongLastSequenceError:
                continue  # someone wrote in between: read again
        raise RuntimeError(f"job state of {key} kept changing; gave up writing it")


async def ensure_announced(js: JetStreamContext, outcome: Terminal, publisher: str) -> None:
    """Publish a claimed outcome that may never have reached EVENTS (whoever claimed it died
    between the claim and the publish), as ``publisher`` (the body still names the attempt
    that ended the job). Skipped when it is there already: the last event of its kind is this
    very one (a job run again from its dead letter has an older outcome of the same kind)."""
    kind = kind_of(outcome)
    try:
        last = await js.get_last_msg(
            EVENTS_STREAM, event_subject(outcome.tenant, outcome.job_id, kind, "*"),
            direct=True)
        stored = decode_event(last.data or b"")
        if (getattr(stored, "attempt", 0), stored.at) == (getattr(outcome, "attempt", 0),
                                                          outcome.at):
            return
    except NotFoundError:
        pass
    except ValueError:  # unreadable: publish ours, readers skip the bad one
        pass
    await js.publish(event_subject(outcome.tenant, outcome.job_id, kind, publisher),
                     encode_event(outcome))



def kind_of(event: Event) -> str:
    """The event's kind: its tag, and the kind token of its subject."""
    return str(type(event).__struct_config__.tag)


async def retryable_failures(js: JetStreamContext, tenant: str, job_id: str) -> int:
    """The job's retryable failures so far, counted from its stored ``retrying`` events (0 when
    EVENTS does not answer: a budget counted short is spent on one more retry, not lost)."""
    try:
        info = await js.stream_info(
            EVENTS_STREAM, subjects_filter=event_subject(tenant, job_id, "retrying", "*"))
    except nats.errors.Error:
        return 0
    return sum((info.state.subjects or {}).values())
