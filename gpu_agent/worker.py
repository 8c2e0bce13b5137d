"""One job, start to finish: decode, validate, fetch, encode, upload, report, then ack.

Order matters and is the contract with clients:
- the outcome is claimed in the job state (compare-and-set) and published **before** the ack,
  so a crash between them repeats a report, never loses one, and of two attempts that both
  finish only the first is ever announced;
- a job that already has an outcome is acked without running again (after making sure its
  outcome event exists), so a redelivery or a late resubmit never shows a client two results;
- final failures publish ``failed`` and ``term()``. Retryable ones publish ``retrying`` and
  ``nak`` with backoff while the job's failure budget (``max_retries``) and its deliveries
  last; host loss spends only deliveries, and the controller's reaper ends a job whose
  deliveries ran out. A failure on the last delivery always ends the job here, because the
  server would never deliver it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import nats.errors
from loguru import logger
from nats.aio.msg import Msg

from broker.events import Failed, JobError, Retrying, Started, Succeeded
from broker.jobs import JobRequest, decode_job
from broker.subjects import parse_job_subject, validate_job_id, validate_tenant
from gpu_agent.config import AgentConfig
from gpu_agent.errors import JobFailure, backoff_s
from gpu_agent.operations import Operations, WorkContext
from gpu_agent.pipelines import run_job
from gpu_agent.progress import ProgressReporter
from gpu_agent.reporter import Reporter
from gpu_agent.url_guard import scheme_problem

if TYPE_CHECKING:
    from loguru import Logger
    from nats.js import JetStreamContext

__all__ = ["JobOutcome", "Worker"]


@dataclass(frozen=True, slots=True)
class JobOutcome:
    job_id: str
    status: str  # succeeded | failed | retrying | skipped | released | unreported


@dataclass(frozen=True, slots=True)
class _Attempt:
    msg: Msg
    tenant: str
    operation: str
    job_id: str
    number: int  # num_delivered
    log: Logger
    encoder: str = ""


class Worker:
    def __init__(self, *, js: JetStreamContext, reporter: Reporter, config: AgentConfig,
                 agent_id: str, operations: Operations, ack_wait_s: float, max_deliver: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._js = js
        self._report = reporter
        self._cfg = config
        self._agent_id = agent_id
        self._ops = operations
        self._ack_wait_s = ack_wait_s
        self._max_deliver = max_deliver
        self._clock = clock

    async def handle(self, msg: Msg) -> JobOutcome:
        try:
            tenant, operation, job_id = parse_job_subject(msg.subject)
        except ValueError:  # e.g. jobs.<op>.<id>, queued before jobs had tenants
            logger.error("job on {subject} dropped: not jobs.<tenant>.<operation>.<job_id>",
                         subject=msg.subject)
            await msg.term()
            return JobOutcome(msg.subject.rsplit(".", 1)[-1], "failed")
        number = msg.metadata.num_delivered
        log = logger.bind(tenant=tenant, job_id=job_id, attempt=number, operation=operation)
        attempt = _Attempt(msg, tenant, operation, job_id, number, log)
        try:
            validate_tenant(tenant)
            validate_job_id(job_id)
        except ValueError as exc:
            # Only the gateway writes JOBS, and it checks both; should one slip through, it
            # cannot have events or a state (neither can name it): drop it, loudly.
            log.error("job dropped: {error}", error=str(exc))
            await msg.term()
            return JobOutcome(job_id, "failed")
        existing = await self._report.terminal(tenant, job_id)
        if existing is not None:
            return await self._skip(attempt, existing)
        lease = asyncio.create_task(self._keep_lease(msg))
        try:
            return await self._run(attempt)
        except asyncio.CancelledError:
            log.warning("job released: the agent is stopping")
            try:
                await asyncio.shield(msg.nak())
            except nats.errors.Error as exc:
                log.warning("release failed ({error}); the job returns after ack_wait",
                            error=str(exc))
            raise
        finally:
            lease.cancel()

    async def _skip(self, attempt: _Attempt, outcome: Succeeded | Failed) -> JobOutcome:
        attempt.log.info("job already ended ({kind}); acking without running it",
                         kind=type(outcome).__name__.lower())
        await self._report.ensure_published(outcome)
        await attempt.msg.ack_sync()
        return JobOutcome(attempt.job_id, "skipped")

    async def _run(self, attempt: _Attempt) -> JobOutcome:
        started_at = self._clock()
        try:
            job = _decode(attempt.operation, attempt.msg.data)
            attempt = dataclasses.replace(attempt, encoder=self._ops.encoder_for(job))
            started = Started(job_id=attempt.job_id, tenant=attempt.tenant, at=started_at,
                              operation=attempt.operation, agent_id=self._agent_id,
                              attempt=attempt.number, encoder=attempt.encoder)
            if (existing := await self._report.started(started)) is not None:
                return await self._skip(attempt, existing)
            attempt.log.info("job started on {encoder}", encoder=attempt.encoder)
            with _work_dir(self._cfg.work_dir, attempt.job_id, attempt.number) as wd:
                ctx = WorkContext(tenant=attempt.tenant, job_id=attempt.job_id,
                                  attempt=attempt.number, work_dir=wd,
                                  queued_at=attempt.msg.metadata.timestamp.timestamp(),
                                  started_at=started_at,
                                  progress=self._progress_reporter(attempt))
                result = await run_job(self._ops, job, ctx)
        except JobFailure as failure:
            return await self._fail(attempt, failure)
        except Exception as exc:  # a bug or an unclassified error: retry, then give up loudly
            attempt.log.exception("job crashed")
            return await self._fail(attempt, JobFailure(
                "internal_error", f"agent error: {type(exc).__name__}: {exc}", retryable=True))
        done = Succeeded(job_id=attempt.job_id, tenant=attempt.tenant, at=self._clock(),
                         operation=attempt.operation,
                         agent_id=self._agent_id, attempt=attempt.number,
                         encoder=attempt.encoder, output=result.output, timings=result.timings,
                         price_per_hour=self._cfg.price_per_hour,
                         cost_usd=round(result.timings.total_s
                                        * self._cfg.price_per_hour / 3600.0, 6))
        if (winner := await self._report.finish(done)) is not None:
            attempt.log.warning("another attempt ended this job first ({agent}); this "
                                "result is dropped", agent=winner.agent_id)
        await attempt.msg.ack_sync()
        attempt.log.info("job succeeded in {total_s:.2f}s", total_s=result.timings.total_s)
        return JobOutcome(attempt.job_id, "succeeded")

    async def _fail(self, attempt: _Attempt, failure: JobFailure) -> JobOutcome:
        error = JobError(code=failure.code, message=failure.message)
        if failure.retryable:
            failures = await self._report.failures_so_far(attempt.tenant, attempt.job_id) + 1
            if failures <= self._cfg.max_retries and attempt.number < self._max_deliver:
                delay_s = failure.retry_delay_s
                if delay_s is None:
                    delay_s = backoff_s(failures, self._cfg.retry_delay_s)
                attempt.log.warning("attempt failed, retrying in {delay:.1f}s: {code}: {msg}",
                                    delay=delay_s, code=failure.code, msg=failure.message)
                await self._report.retrying(Retrying(
                    job_id=attempt.job_id, tenant=attempt.tenant, at=self._clock(),
                    agent_id=self._agent_id,
                    attempt=attempt.number, error=error, retry_in_s=delay_s,
                    failures=failures))
                await attempt.msg.nak(delay=delay_s)
                return JobOutcome(attempt.job_id, "retrying")
            error = JobError(code=failure.code, message=f"{failure.message} (gave up after "
                             f"{failures} failed attempts)")
        event = Failed(job_id=attempt.job_id, tenant=attempt.tenant, at=self._clock(),
                       agent_id=self._agent_id,
                       attempt=attempt.number, operation=attempt.operation,
                       encoder=attempt.encoder, error=error)
        await self._report.finish(event)
        await attempt.msg.term()
        attempt.log.warning("job failed: {code}: {message}", code=error.code,
                            message=error.message)
        return JobOutcome(attempt.job_id, "failed")

    def _progress_reporter(self, attempt: _Attempt) -> ProgressReporter:
        return ProgressReporter(js=self._js, tenant=attempt.tenant, job_id=attempt.job_id,
                                attempt=attempt.number,
                                agent_id=self._agent_id, clock=self._clock,
                                min_interval_s=self._cfg.progress_interval_s)

    async def _keep_lease(self, msg: Msg) -> None:
        """+WPI every ack_wait/3 while this job is in hand. Hangs are caught by the time
        limits of each phase (URL downloads, FFmpeg's wall clock and stall timeout), not by
        letting the lease lapse: a lapsed lease hands a job still running here to a second
        machine (which the terminal claim then makes harmless, but the work is wasted)."""
        while True:
            await asyncio.sleep(self._ack_wait_s / 3)
            try:
                await msg.in_progress()
            except nats.errors.Error as exc:  # a reconnect in progress: the next tick retries
                logger.warning("lease renewal failed: {error}", error=str(exc))


def _decode(operation: str, data: bytes) -> JobRequest:
    try:
        return decode_job(operation, data)
    except LookupError as exc:
        raise JobFailure("unknown_operation", str(exc.args[0])) from None
    except msgspec.ValidationError as exc:
        raise _refused_scheme(data, str(exc)) or JobFailure(
            "invalid_job", f"invalid {operation} job: {exc}") from None
    except msgspec.DecodeError as exc:
        raise JobFailure("invalid_job", f"job body is not valid JSON: {exc}") from None


def _refused_scheme(data: bytes, error: str) -> JobFailure | None:
    """An input the contract refuses because it is a file://, ftp://... URL: said plainly
    (``input_forbidden``) instead of as a pattern mismatch, without echoing the URL."""
    field = error.rpartition(" - at `$.")[2].rstrip("`")
    try:
        body = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    value = body.get(field) if isinstance(body, dict) else None
    problem = scheme_problem(value) if isinstance(value, str) else None
    return JobFailure("input_forbidden", f"{field}: {problem}") if problem else None


@contextlib.contextmanager
def _work_dir(root: str, job_id: str, attempt: int) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"{job_id}-{attempt}-", dir=root or None))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
