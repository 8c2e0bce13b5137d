"""One job, start to finish: decode, validate, fetch, encode, upload, report.

The job comes from the dispatcher (a ``Grant``: leased to this agent alone) and everything said
about it goes back to the dispatcher, which checks it against the lease and does the JetStream
part (broker/dispatch.py). Order is still the contract with clients:
- ``started`` first; a job that already has an outcome is answered ``already_ended`` and not
  run again;
- the result is uploaded before ``succeeded`` is reported, and the dispatcher stores it,
  measures it and claims the outcome before it acks, so a crash between them repeats a report,
  never loses one;
- final failures report ``failed``. Retryable ones report ``retrying`` with a backoff while the
  job's failure budget (``max_retries``) and its deliveries last; host loss spends only
  deliveries, and the controller's reaper ends a job whose deliveries ran out. A failure on the
  last delivery always ends the job here, because the server would never deliver it again;
- a ``Hold`` every ``hold_every_s`` keeps the lease. Told ``not_holder`` (the lease lapsed and
  the job went elsewhere, or the job was cancelled), the agent drops the job at once and
  reports nothing; told directly that it was cancelled, it does so without waiting for a hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import nats.errors
from loguru import logger

from broker.dispatch import Grant, Hold, Release, Report, ReportReply
from broker.events import Failed, JobError, Retrying, Started, Succeeded
from broker.jobs import JobRequest, decode_job
from broker.url_guard import scheme_problem
from gpu_agent.config import AgentConfig
from gpu_agent.dispatch_link import DispatchLink, LeaseLost
from gpu_agent.errors import JobFailure, backoff_s, classify
from gpu_agent.operations import Operations, WorkContext
from gpu_agent.pipelines import run_job
from gpu_agent.progress import ProgressReporter
from gpu_agent.workspace import Workspace

if TYPE_CHECKING:
    from loguru import Logger

__all__ = ["JobOutcome", "Unreported", "Worker"]


class Unreported(Exception):
    """A report that must arrive could not be delivered."""


@dataclass(frozen=True, slots=True)
class JobOutcome:
    job_id: str
    # succeeded | failed | retrying | skipped | released | lost | unreported | cancelled
    status: str


@dataclass(frozen=True, slots=True)
class _Attempt:
    grant: Grant
    log: Logger
    encoder: str = ""

    @property
    def job_id(self) -> str:
        return self.grant.job_id

    @property
    def tenant(self) -> str:
        return self.grant.tenant

    @property
    def number(self) -> int:
        return self.grant.attempt


class Worker:
    def __init__(self, *, link: DispatchLink, config: AgentConfig, agent_id: str,
                 operations: Operations, workspace: Workspace, build: str = "",
                 clock: Callable[[], float] = time.time) -> None:
        self._link = link
        self._workspace = workspace
        self._build = build
        self._cfg = config
        self._agent_id = agent_id
        self._ops = operations
        self._clock = clock

    async def handle(self, grant: Grant,
                     cancelled: asyncio.Event | None = None) -> JobOutcome:
        """Run the job to its outcome. ``cancelled`` set (the tenant cancelled it; the
        dispatcher has recorded that and dropped the lease): FFmpeg is killed, the job's files
        deleted, and nothing more is reported."""
        log = logger.bind(tenant=grant.tenant, job_id=grant.job_id, attempt=grant.attempt,
                          operation=grant.operation)
        attempt = _Attempt(grant, log)
        run = asyncio.create_task(self._run(attempt))
        hold = asyncio.create_task(self._hold(grant, log))
        stop = asyncio.create_task((cancelled or asyncio.Event()).wait())
        try:
            await asyncio.wait({run, hold, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not run.done():  # cancelled, or the hold loop ended: the lease is gone
                run.cancel()
                with contextlib.suppress(asyncio.CancelledError, LeaseLost, Unreported):
                    await run
                if stop.done():
                    log.info("job cancelled; stopped and its files deleted")
                    return JobOutcome(grant.job_id, "cancelled")
                log.warning("lease lost (the job runs elsewhere now); dropped")
                return JobOutcome(grant.job_id, "lost")
            try:
                return run.result()
            except LeaseLost:
                log.warning("lease lost (the job runs elsewhere now); dropped")
                return JobOutcome(grant.job_id, "lost")
        except asyncio.CancelledError:
            run.cancel()
            log.warning("job released: the agent is stopping")
            with contextlib.suppress(nats.errors.Error, TimeoutError, asyncio.CancelledError):
                await asyncio.shield(self._link.report(
                    Release(job_id=grant.job_id, tenant=grant.tenant)))
            raise
        finally:
            hold.cancel()
            stop.cancel()

    async def _hold(self, grant: Grant, log: Logger) -> None:
        """Renew the lease every ``hold_every_s``; returns when the dispatcher says it is
        gone. Hangs are caught by each phase's own time limits (URL downloads, FFmpeg's
        wall clock and stall timeout), not by letting the lease lapse."""
        while True:
            await asyncio.sleep(grant.hold_every_s)
            try:
                reply = await self._link.report(Hold(job_id=grant.job_id, tenant=grant.tenant))
            except (nats.errors.Error, TimeoutError) as exc:  # a reconnect: next tick retries
                log.warning("lease renewal failed: {error}", error=str(exc) or
                            type(exc).__name__)
                continue
            if reply.code == "not_holder":
                return

    async def _say(self, attempt: _Attempt, report: Report) -> ReportReply:
        """A report that must arrive. Raises LeaseLost on ``not_holder``, and Unreported
        when the dispatcher could not be reached (the job then comes back after its lease
        lapses: nothing is lost)."""
        try:
            reply = await self._link.report_until_heard(report)
        except (nats.errors.Error, TimeoutError, RuntimeError) as exc:
            raise Unreported(str(exc) or type(exc).__name__) from exc
        if reply.code == "not_holder":
            raise LeaseLost(reply.message)
        if not reply.ok and reply.code != "already_ended":
            attempt.log.error("the dispatcher refused a report: {code}: {message}",
                              code=reply.code, message=reply.message)
        return reply

    async def _run(self, attempt: _Attempt) -> JobOutcome:
        started_at = self._clock()
        grant = attempt.grant
        try:
            job = _decode(grant.operation, grant.body.encode())
            attempt = dataclasses.replace(attempt, encoder=self._ops.encoder_for(job))
            started = Started(job_id=grant.job_id, tenant=grant.tenant, at=started_at,
                              operation=grant.operation, agent_id=self._agent_id,
                              attempt=grant.attempt, encoder=attempt.encoder,
                              build=self._build)
            if (await self._say(attempt, started)).code == "already_ended":
                attempt.log.info("job already ended; not run again")
                return JobOutcome(grant.job_id, "skipped")
            attempt.log.info("job started on {encoder}", encoder=attempt.encoder)
            with self._workspace.job_dir(grant.job_id, grant.attempt) as wd:
                progress = self._progress_reporter(attempt)
                ctx = WorkContext(tenant=grant.tenant, job_id=grant.job_id,
                                  attempt=grant.attempt, work_dir=wd,
                                  queued_at=grant.queued_at, started_at=started_at,
                                  progress=progress)
                try:
                    result = await run_job(self._ops, job, ctx)
                finally:
                    await progress.close()
            done = Succeeded(job_id=grant.job_id, tenant=grant.tenant, at=self._clock(),
                             operation=grant.operation, agent_id=self._agent_id,
                             attempt=grant.attempt, encoder=attempt.encoder,
                             output=result.output, timings=result.timings, build=self._build,
                             price_per_hour=self._cfg.price_per_hour,
                             cost_usd=round(result.timings.total_s
                                            * self._cfg.price_per_hour / 3600.0, 6))
            reply = await self._say(attempt, done)
            if reply.code == "upload_mismatch":
                raise JobFailure("upload_failed", f"the result did not arrive whole: "
                                 f"{reply.message}", retryable=True)
            if reply.code == "results_quota_exceeded":  # (found as the result was committed)
                raise JobFailure(reply.code, f"the result could not be stored: {reply.message}")
        except JobFailure as failure:
            return await self._fail(attempt, failure)
        except (LeaseLost, Unreported):
            raise
        except Exception as exc:  # unclassified where raised: a full disk, or a bug
            classified = classify(exc)
            if classified.code == "internal_error":
                attempt.log.exception("job crashed")
            return await self._fail(attempt, classified)
        attempt.log.info("job succeeded in {total_s:.2f}s", total_s=result.timings.total_s)
        return JobOutcome(grant.job_id, "succeeded")

    async def _fail(self, attempt: _Attempt, failure: JobFailure) -> JobOutcome:
        grant = attempt.grant
        error = JobError(code=failure.code, message=failure.message,
                         stderr_tail=failure.stderr_tail)
        if failure.retryable:
            failures = grant.failures + 1
            if failures <= self._cfg.max_retries and grant.attempt < grant.max_deliver:
                delay_s = failure.retry_delay_s
                if delay_s is None:
                    delay_s = backoff_s(failures, self._cfg.retry_delay_s)
                attempt.log.warning("attempt failed, retrying in {delay:.1f}s: {code}: {msg}",
                                    delay=delay_s, code=failure.code, msg=failure.message)
                await self._say(attempt, Retrying(
                    job_id=grant.job_id, tenant=grant.tenant, at=self._clock(),
                    agent_id=self._agent_id, attempt=grant.attempt, error=error,
                    retry_in_s=delay_s, failures=failures))
                return JobOutcome(grant.job_id, "retrying")
            error = JobError(code=failure.code, message=f"{failure.message} (gave up after "
                             f"{failures} failed attempts)", stderr_tail=failure.stderr_tail)
        await self._say(attempt, Failed(
            job_id=grant.job_id, tenant=grant.tenant, at=self._clock(),
            agent_id=self._agent_id, attempt=grant.attempt, operation=grant.operation,
            encoder=attempt.encoder, error=error))
        attempt.log.warning("job failed: {code}: {message}", code=error.code,
                            message=error.message)
        return JobOutcome(grant.job_id, "failed")

    def _progress_reporter(self, attempt: _Attempt) -> ProgressReporter:
        return ProgressReporter(link=self._link, tenant=attempt.tenant, job_id=attempt.job_id,
                                attempt=attempt.number, agent_id=self._agent_id,
                                clock=self._clock,
                                min_interval_s=self._cfg.progress_interval_s)


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

