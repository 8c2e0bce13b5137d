"""The job-state KV: one entry per job id holding its latest lifecycle event, with the terminal
state claimed by compare-and-set.

Exactly one terminal event per job is the contract with clients. Two attempts can both finish
(a frozen machine whose lease lapsed wakes up after another machine ran the job), and they may
finish minutes apart, far outside any publish dedupe window. So before anyone publishes
``succeeded`` or ``failed`` it must win ``claim_terminal``; the loser stays silent. A terminal
entry is never overwritten, so a late ``started`` cannot make a finished job look runnable.
"""

from __future__ import annotations

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker.events import Event, Failed, Started, Succeeded, decode_event, encode_event

__all__ = ["JobStates", "Terminal"]

Terminal = Succeeded | Failed
_CAS_ATTEMPTS = 20


class JobStates:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def get(self, job_id: str) -> Event | None:
        current, _ = await self._read(job_id)
        return current

    async def terminal(self, job_id: str) -> Terminal | None:
        current, _ = await self._read(job_id)
        return current if isinstance(current, (Succeeded, Failed)) else None

    async def record_started(self, event: Started) -> Terminal | None:
        """Record an attempt's start; returns the terminal state instead if the job has one."""
        return await self._write_unless_terminal(event)

    async def claim_terminal(self, event: Terminal) -> Terminal | None:
        """Make ``event`` the job's outcome. Returns None when claimed; otherwise the outcome
        that was there first, and the caller must not publish its own."""
        return await self._write_unless_terminal(event)

    async def _read(self, job_id: str) -> tuple[Event | None, int | None]:
        try:
            entry = await self._kv.get(job_id)
        except KeyNotFoundError:
            return None, None
        if not entry.value:
            return None, entry.revision
        return decode_event(entry.value), entry.revision

    async def _write_unless_terminal(self, event: Event) -> Terminal | None:
        data = encode_event(event)
        for _ in range(_CAS_ATTEMPTS):
            current, revision = await self._read(event.job_id)
            if isinstance(current, (Succeeded, Failed)):
                return current
            try:
                if revision is None:
                    await self._kv.create(event.job_id, data)
                else:
                    await self._kv.update(event.job_id, data, last=revision)
                return None
            except KeyWrongLastSequenceError:
                continue  # someone wrote in between: read again
        raise RuntimeError(f"job state of {event.job_id} kept changing; gave up writing it")
