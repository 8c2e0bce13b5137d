"""The jobs an agent has in hand, one per slot: each slot asks the dispatcher for a job, runs
it to its outcome, and asks again, until the agent stops.

Most machines run one slot. Several (``VIDFLEET_SLOTS``, set by the controller) let one GPU
encode several jobs at once: NVENC sessions run side by side, and decoding, subtitles and audio
are CPU work that overlaps. Each slot holds its own lease (broker/dispatch.py ``WorkRequest``),
so a stop, a cancel or a lost lease touches one job and no other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import nats.errors

from broker.dispatch import Grant
from gpu_agent.dispatch_link import DispatchLink
from gpu_agent.worker import JobOutcome, Worker

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["Slots"]


class Slots:
    def __init__(self, link: DispatchLink, worker: Worker, *, fetch_timeout_s: float,
                 log: Logger, on_outcome: Callable[[JobOutcome], None] | None = None) -> None:
        self._link = link
        self._worker = worker
        self._fetch_timeout_s = fetch_timeout_s
        self._log = log
        self._on_outcome = on_outcome
        # Slot -> (tenant, job id, set when that job is cancelled).
        self._in_hand: dict[int, tuple[str, str, asyncio.Event]] = {}
        self.jobs_done = 0

    @property
    def slots(self) -> int:
        return self._link.slots

    @property
    def jobs(self) -> list[str]:
        """The job ids in hand, by slot."""
        return [job_id for _, (_, job_id, _) in sorted(self._in_hand.items())]

    def cancel(self, tenant: str, job_id: str) -> None:
        """Stop that job now if it is in hand; a cancel of any other job (one this agent no
        longer holds) changes nothing."""
        for held_tenant, held_job, cancelled in self._in_hand.values():
            if (held_tenant, held_job) == (tenant, job_id):
                self._log.info("job {tenant}/{job_id} cancelled: stopping it", tenant=tenant,
                               job_id=job_id)
                cancelled.set()

    async def run(self, stop: asyncio.Event, force: asyncio.Event) -> None:
        """Until ``stop``: then each slot finishes its job, or releases it on ``force``."""
        self._log.info("asking the dispatcher for jobs ({n} at a time)", n=self._link.slots)
        async with asyncio.TaskGroup() as tg:
            for slot in range(self._link.slots):
                tg.create_task(self._serve(slot, stop, force))

    async def _serve(self, slot: int, stop: asyncio.Event, force: asyncio.Event) -> None:
        pause_s = 0.5
        while not stop.is_set():
            try:
                grant = await self._link.next_job_or_stop(self._fetch_timeout_s, stop, slot)
            except (nats.errors.Error, TimeoutError, RuntimeError) as exc:
                # No dispatcher yet (a controller restart), a reconnect, or a refusal.
                self._log.warning("no job from the dispatcher ({error}); asking again in "
                                  "{s:.1f} s", error=str(exc) or type(exc).__name__, s=pause_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause_s)
                pause_s = min(pause_s * 2, 5.0)
                continue
            pause_s = 0.5
            if grant is not None:
                await self._work(slot, grant, force)

    async def _work(self, slot: int, grant: Grant, force: asyncio.Event) -> None:
        cancelled = asyncio.Event()
        self._in_hand[slot] = (grant.tenant, grant.job_id, cancelled)
        task = asyncio.create_task(self._worker.handle(grant, cancelled))
        forced = asyncio.create_task(force.wait())
        try:
            await asyncio.wait({task, forced}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                self._log.warning("forced stop: releasing job {job_id}", job_id=grant.job_id)
                task.cancel()
            try:
                outcome = await task
            except asyncio.CancelledError:
                outcome = JobOutcome(grant.job_id, "released")
            except Exception:  # could not even report (NATS down): the job comes back
                self._log.exception("job {job_id} could not be reported; it runs again once "
                                    "its lease lapses", job_id=grant.job_id)
                outcome = JobOutcome(grant.job_id, "unreported")
            self.jobs_done += 1
            if self._on_outcome:
                self._on_outcome(outcome)
        finally:
            forced.cancel()
            del self._in_hand[slot]
