"""The reaper: ends jobs whose deliveries ran out, so none sits in the queue forever.

When every delivery of a job ended without an ack or term (each machine vanished, was killed,
or was stopped while running it), the server stops delivering it but keeps it in JOBS, counted
in the backlog, with no event telling its client anything. The server announces this with a
MAX_DELIVERIES advisory, which the topology captures in a stream; the reaper reads those,
claims the job's terminal state, publishes ``failed`` (code ``deliveries_exhausted``) and
deletes the message. Without it, such a job would keep a paid machine scaled up and its client
waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import msgspec
import nats.errors
from loguru import logger
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from broker.dead_letters import requeue_offsets
from broker.events import Failed, JobError, encode_event
from broker.jobstate import JobStates, ensure_announced
from broker.subjects import (
    CONTROLLER_PUBLISHER,
    EXHAUSTED_CONSUMER,
    EXHAUSTED_STREAM,
    JOB_COSTS_BUCKET,
    JOBS_STREAM,
    JOBSTATE_BUCKET,
    event_subject,
    parse_job_subject,
)
from controller.dead_letters import DeadLetters
from controller.job_costs import JobCosts

__all__ = ["Reaper"]


class _Advisory(msgspec.Struct):
    stream_seq: int
    deliveries: int = 0


_ADVISORY = msgspec.json.Decoder(_Advisory)


class Reaper:
    def __init__(self, js: JetStreamContext, *, letters: DeadLetters | None = None,
                 clock: Callable[[], float] = time.time, fetch_timeout_s: float = 5.0) -> None:
        """``letters``: where a failed job is kept (None: not kept, for tests of the reaper
        alone)."""
        self._js = js
        self._letters = letters
        self._clock = clock
        self._fetch_timeout_s = fetch_timeout_s
        self._costs: JobCosts | None = None  # opened by run()

    async def run(self, stop: asyncio.Event) -> None:
        """Reap until ``stop``. The bus in trouble (a restart, a leader change) pauses it;
        nothing ends it, or exhausted jobs would sit in the backlog for good."""
        while not stop.is_set():
            try:
                await self._run(stop)
            except (nats.errors.Error, TimeoutError) as exc:
                logger.warning("the reaper lost the bus ({error}); again in 1 s",
                               error=str(exc) or type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    async def _run(self, stop: asyncio.Event) -> None:
        states = JobStates(await self._js.key_value(JOBSTATE_BUCKET))
        self._costs = JobCosts(await self._js.key_value(JOB_COSTS_BUCKET))
        sub = await self._js.pull_subscribe_bind(consumer=EXHAUSTED_CONSUMER,
                                                 stream=EXHAUSTED_STREAM)
        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(10, timeout=self._fetch_timeout_s)
                except TimeoutError:  # nats-py raises its own or a bare one
                    continue
                for msg in msgs:
                    try:
                        await self.reap(msg, states)
                    except (nats.errors.Error, TimeoutError, RuntimeError) as exc:
                        # Left unacked, the advisory comes back; the controller (the
                        # gateway, the scaling loop) must not go down with one job.
                        logger.warning("reaping failed, retried later: {error}",
                                       error=str(exc) or type(exc).__name__)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def reap(self, advisory: Msg, states: JobStates) -> None:
        """End the job an advisory names. Anything it cannot use (a malformed advisory, a job
        subject of another shape) is logged and dropped: one bad message must not stop the
        reaper, or take the controller down with it, for as long as it is retained."""
        try:
            info = _ADVISORY.decode(advisory.data)
        except msgspec.DecodeError as exc:
            logger.error("unusable MAX_DELIVERIES advisory dropped: {error}", error=str(exc))
            await advisory.term()
            return
        try:
            job = await self._js.get_msg(JOBS_STREAM, info.stream_seq)
        except NotFoundError:  # finished after all, or already reaped
            await advisory.ack()
            return
        try:
            tenant, operation, job_id = parse_job_subject(job.subject or "")
            subject = event_subject(tenant, job_id, "failed", CONTROLLER_PUBLISHER)
        except ValueError as exc:
            logger.error("job {seq} cannot be failed ({error}); deleted", seq=info.stream_seq,
                         error=str(exc))
            await self._js.delete_msg(JOBS_STREAM, info.stream_seq)
            await advisory.ack()
            return
        spent = await self._costs.get(tenant, job_id) if self._costs else None
        attempts_before, _ = requeue_offsets(job.headers)
        failed = Failed(
            job_id=job_id, tenant=tenant, at=self._clock(), agent_id=CONTROLLER_PUBLISHER,
            attempt=attempts_before + info.deliveries, operation=operation,
            cost_usd=round(spent.cost_usd, 6) if spent else 0.0,
            error=JobError(code="deliveries_exhausted", message=(
                f"the job was delivered {info.deliveries} times and no attempt finished: each "
                "machine running it was lost or stopped (a job that crashes its agent ends "
                "here too). It is kept as a dead letter: `vidfleet dlq retry` runs it "
                "again.")))
        winner = await states.claim_terminal(failed)
        if winner is None:
            await self._js.publish(subject, encode_event(failed))
        ended = failed if winner is None else winner
        if (self._letters is not None and isinstance(ended, Failed)
                and ended.attempt == failed.attempt):  # this failure (or this reaping's, again)
            await self._letters.keep(operation=operation, body=job.data or b"",
                                     headers=job.headers, failed=ended)
        if winner is None:
            logger.bind(job_id=job_id).warning("job failed: deliveries exhausted after {n}",
                                               n=info.deliveries)
        else:  # ended already; but a crash after a claim may have left it unannounced
            await ensure_announced(self._js, winner, CONTROLLER_PUBLISHER)
        await self._js.delete_msg(JOBS_STREAM, info.stream_seq)
        await advisory.ack()
