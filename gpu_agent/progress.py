"""Throttled progress events: at most one per ``min_interval_s``, never a repeat of the last.

Percent is media time over ``expected_duration_s``, which the operation sets once it knows it
(FFmpeg starts while the input is still being probed). It stays below 100 until the job has
succeeded: 100 is said by the succeeded event, never by a progress event.

Sent in the background, one at a time: the FFmpeg runner awaits each update, and a report
the dispatcher does not answer (a controller killed mid-send) waits out the request timeout.
Awaited inline, that held the job's end up to 10 s after FFmpeg finished; now an update that
comes while one is in flight is dropped, and a later one carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import nats.errors
from loguru import logger

from broker.events import Progress
from gpu_agent.dispatch_link import DispatchLink
from gpu_agent.ffmpeg import ProgressUpdate

__all__ = ["ProgressReporter"]


class ProgressReporter:
    def __init__(self, *, link: DispatchLink, tenant: str, job_id: str, attempt: int,
                 agent_id: str, clock: Callable[[], float], min_interval_s: float) -> None:
        self._link = link
        self._tenant = tenant
        self._job_id = job_id
        self._attempt = attempt
        self._agent_id = agent_id
        self._clock = clock
        self._min_interval_s = min_interval_s
        self._last_at = float("-inf")
        self._last_percent = -1.0
        self.published = 0
        self._sending: asyncio.Task[None] | None = None
        self.expected_duration_s: float | None = None

    async def __call__(self, update: ProgressUpdate) -> None:
        now = self._clock()
        duration_s = self.expected_duration_s
        if not duration_s:
            return
        percent = round(min(99.9, 100.0 * update.media_time_s / duration_s), 1)
        if percent == self._last_percent:
            return
        if now - self._last_at < self._min_interval_s and not update.done:
            return
        if self._sending is not None and not self._sending.done():
            return  # the last one is still on its way
        self._last_at, self._last_percent = now, percent
        event = Progress(job_id=self._job_id, tenant=self._tenant, at=now, agent_id=self._agent_id,
                         attempt=self._attempt, percent=percent,
                         media_time_s=round(update.media_time_s, 3), speed=update.speed)
        self._sending = asyncio.create_task(self._send(event))

    async def _send(self, event: Progress) -> None:
        try:
            await self._link.report(event)  # the dispatcher publishes it
        except (nats.errors.Error, TimeoutError) as exc:
            # Progress is best effort: a reconnect must not fail (or kill) the encode.
            logger.bind(job_id=self._job_id).warning("progress event lost: {error}",
                                                     error=str(exc) or type(exc).__name__)
            return
        self.published += 1

    async def close(self) -> None:
        """Drop a report still on its way: the job's outcome goes next, and nothing about
        its progress may follow it."""
        if self._sending is not None and not self._sending.done():
            self._sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sending
