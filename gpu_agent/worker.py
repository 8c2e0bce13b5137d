"""One job, start to finish: decode, validate, fetch, encode, upload, report, then ack.

Order matters and is the contract with clients:
- the terminal event (deduplicated by ``<job_id>.<kind>``) and the job-state entry are written
  **before** the ack, so a crash between them repeats a report, never loses one;
- a job whose state already says succeeded is acked without running again, so a redelivery
  (or a resubmit after the dedupe window) never shows a client two results;
- final failures publish ``failed`` and ``term()``; retryable ones ``nak(delay)`` while attempts
  remain. The last allowed attempt always ends the job, because an exhausted message left for
  the server to notice would keep the backlog at one and keep a paid machine busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from loguru import logger
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from broker.events import Event, Failed, JobError, Started, Succeeded, decode_event, encode_event
from broker.jobs import decode_job
from broker.subjects import event_subject, parse_job_subject
from gpu_agent.config import AgentConfig
from gpu_agent.errors import JobFailure, backoff_s
from gpu_agent.operations import Operations, WorkContext
from gpu_agent.progress import ProgressReporter

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["JobOutcome", "Worker"]


@dataclass(frozen=True, slots=True)
class JobOutcome:
    job_id: str
    status: str  # succeeded | failed | retrying | skipped | released


class Worker:
    def __init__(self, *, js: JetStreamContext, jobstate: KeyValue, config: AgentConfig,
                 agent_id: str, operations: Operations, ack_wait_s: float, max_deliver: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._js = js
        self._jobstate = jobstate
        self._cfg = config
        self._agent_id = agent_id
        self._ops = operations
        self._ack_wait_s = ack_wait_s
        self._max_deliver = max_deliver
        self._clock = clock

    async def handle(self, msg: Msg) -> JobOutcome:
        operation, job_id = parse_job_subject(msg.subject)
        attempt = msg.metadata.num_delivered
        log = logger.bind(job_id=job_id, attempt=attempt, operation=operation)
        if await self._already_succeeded(job_id):
            log.info("job already succeeded; acking the duplicate without running it")
            await msg.ack_sync()
            return JobOutcome(job_id, "skipped")
        lease = asyncio.create_task(self._keep_lease(msg))
        try:
            return await self._run(msg, operation, job_id, attempt, log)
        except asyncio.CancelledError:
            log.warning("job released: the agent is stopping")
            with contextlib.suppress(Exception):
                await asyncio.shield(msg.nak())
            raise
        finally:
            lease.cancel()

    async def _run(self, msg: Msg, operation: str, job_id: str, attempt: int,
                   log: Logger) -> JobOutcome:
        started_at = self._clock()
        encoder = ""
        try:
            job = _decode(operation, msg.data)
            encoder = self._ops.encoder_for(operation)
            await self._report(Started(job_id=job_id, at=started_at, operation=operation,
                                       agent_id=self._agent_id, attempt=attempt,
                                       encoder=encoder))
            log.info("job started on {encoder}", encoder=encoder)
            with _work_dir(self._cfg.work_dir, job_id, attempt) as wd:
                ctx = WorkContext(job_id=job_id, attempt=attempt, work_dir=wd,
                                  queued_at=msg.metadata.timestamp.timestamp(),
                                  started_at=started_at,
                                  progress=self._progress_reporter(job_id, attempt))
                result = await self._ops.run(operation, job, ctx)
        except JobFailure as failure:
            return await self._fail(msg, job_id, operation, attempt, encoder, failure, log)
        except Exception as exc:  # a bug or an unclassified error: retry, then give up loudly
            log.exception("job crashed")
            crash = JobFailure("internal_error", f"agent error: {type(exc).__name__}: {exc}",
                               retryable=True)
            return await self._fail(msg, job_id, operation, attempt, encoder, crash, log)
        done = Succeeded(job_id=job_id, at=self._clock(), operation=operation,
                         agent_id=self._agent_id, attempt=attempt, encoder=encoder,
                         output=result.output, timings=result.timings)
        await self._report(done, terminal=True)
        await msg.ack_sync()
        log.info("job succeeded in {total_s:.2f}s", total_s=result.timings.total_s)
        return JobOutcome(job_id, "succeeded")

    async def _fail(self, msg: Msg, job_id: str, operation: str, attempt: int, encoder: str,
                    failure: JobFailure, log: Logger) -> JobOutcome:
        if failure.retryable and attempt < self._max_deliver:
            log.warning("attempt failed, will retry: {code}: {message}",
                        code=failure.code, message=failure.message)
            delay_s = failure.retry_delay_s
            if delay_s is None:
                delay_s = backoff_s(attempt, self._cfg.retry_delay_s)
            await msg.nak(delay=delay_s)
            return JobOutcome(job_id, "retrying")
        if failure.retryable:
            failure = JobFailure(failure.code, f"{failure.message} (gave up after {attempt} "
                                 "attempts)")
        event = Failed(job_id=job_id, at=self._clock(), agent_id=self._agent_id,
                       attempt=attempt, operation=operation, encoder=encoder,
                       error=JobError(code=failure.code, message=failure.message))
        await self._report(event, terminal=True)
        await msg.term()
        log.warning("job failed: {code}: {message}", code=failure.code, message=failure.message)
        return JobOutcome(job_id, "failed")

    async def _report(self, event: Event, *, terminal: bool = False) -> None:
        kind = str(type(event).__struct_config__.tag)
        headers = {"Nats-Msg-Id": f"{event.job_id}.{kind}"} if terminal else None
        data = encode_event(event)
        await self._js.publish(event_subject(event.job_id, kind, self._agent_id), data,
                               headers=headers)
        await self._jobstate.put(event.job_id, data)

    def _progress_reporter(self, job_id: str, attempt: int) -> ProgressReporter:
        return ProgressReporter(js=self._js, job_id=job_id, attempt=attempt,
                                agent_id=self._agent_id, clock=self._clock,
                                min_interval_s=self._cfg.progress_interval_s)

    async def _already_succeeded(self, job_id: str) -> bool:
        try:
            entry = await self._jobstate.get(job_id)
        except KeyNotFoundError:
            return False
        return entry.value is not None and isinstance(decode_event(entry.value), Succeeded)

    async def _keep_lease(self, msg: Msg) -> None:
        """+WPI every ack_wait/3 while this job is in hand. Stalls are caught by timeouts in
        each phase, not by letting the lease lapse: a lapsed lease would hand a job that is
        still running here to a second machine."""
        while True:
            await asyncio.sleep(self._ack_wait_s / 3)
            try:
                await msg.in_progress()
            except Exception as exc:  # a reconnect in progress: the next tick tries again
                logger.warning("lease renewal failed: {error}", error=str(exc))


def _decode(operation: str, data: bytes) -> msgspec.Struct:
    try:
        return decode_job(operation, data)
    except LookupError as exc:
        raise JobFailure("unknown_operation", str(exc.args[0])) from None
    except msgspec.ValidationError as exc:
        raise JobFailure("invalid_job", f"invalid {operation} job: {exc}") from None
    except msgspec.DecodeError as exc:
        raise JobFailure("invalid_job", f"job body is not valid JSON: {exc}") from None


@contextlib.contextmanager
def _work_dir(root: str, job_id: str, attempt: int):
    path = Path(tempfile.mkdtemp(prefix=f"{job_id}-{attempt}-", dir=root or None))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
