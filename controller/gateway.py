"""The submit gateway: the one writer of JOBS. It answers ``submit.<tenant>.<op>.<job_id>``.

A tenant cannot publish to JOBS at all (broker/accounts.py gives no tenant that import), so
everything about entry is decided here, once: the job id's alphabet, the operation, the body
(the agent's own decoder), and the message id that makes a resubmit a duplicate *of the same
tenant's job only*. What it refuses never reaches a queue, an agent or a KV key; the reply
says why. Several controllers may serve it (a queue group); a submit made while none runs
gets "no responders", which the client library retries for a while.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import nats.errors
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from broker.jobs import JobRequest, decode_job
from broker.result_cache import CACHE_KEY_HEADER
from broker.subjects import (
    JOBS_STREAM,
    WEBHOOK_JOBS_BUCKET,
    WEBHOOK_SETTINGS_BUCKET,
    job_subject,
    parse_job_subject,
    parse_submit_subject,
    validate_job_id,
    validate_operation,
    validate_tenant,
)
from broker.submit import SubmitReply, encode_submit_reply
from broker.webhooks import job_url_key, tenant_hooks
from controller.result_cache import ResultCache

__all__ = ["Gateway", "QueueCounts", "check_submit", "stored_job"]

_LIMIT_REACHED = 10077  # "maximum messages (per subject) exceeded"
_QUEUE_GROUP = "gateway"


def check_submit(subject: str,
                 body: bytes) -> tuple[str, str, str, JobRequest] | SubmitReply:
    """(tenant, operation, job_id, the job) of an acceptable submit, or the refusal to send
    back."""
    try:
        tenant, operation, job_id = parse_submit_subject(subject)
        validate_tenant(tenant)
    except ValueError:
        return SubmitReply(ok=False, code="invalid_subject",
                           message="submit on submit.<tenant>.<operation>.<job_id>")
    try:
        validate_job_id(job_id)
    except ValueError as exc:
        return SubmitReply(ok=False, code="invalid_job_id", message=str(exc))
    try:
        validate_operation(operation)
        job = decode_job(operation, body)
    except (LookupError, ValueError) as exc:
        code = "unknown_operation" if isinstance(exc, LookupError) else "invalid_job"
        detail = exc.args[0] if exc.args else str(exc)
        return SubmitReply(ok=False, job_id=job_id, operation=operation, code=code,
                           message=f"invalid {operation} job: {detail}"
                           if code == "invalid_job" else str(detail))
    return tenant, operation, job_id, job


async def stored_job(js: JetStreamContext, tenant: str,
                     job_id: str) -> tuple[int, str] | None:
    """(stream sequence, operation) of the job's message in JOBS, while it is there (queued,
    running, or waiting out a retry delay)."""
    info = await js.stream_info(JOBS_STREAM, subjects_filter=f"jobs.{tenant}.*.{job_id}")
    for subject in info.state.subjects or {}:
        with contextlib.suppress(NotFoundError):
            msg = await js.get_last_msg(JOBS_STREAM, subject)
            return int(msg.seq or 0), parse_job_subject(subject)[1]
    return None


class QueueCounts:
    """How many jobs each tenant has in JOBS (queued or running), for the quota.

    Counting asks the stream for the tenant's subjects (one per job), so it is refreshed at
    most every ``max_age_s`` and what this gateway accepted since is added on: a burst of
    submits costs one count, and the quota can be overshot only by what other gateways
    accepted within that time."""

    def __init__(self, js: JetStreamContext, *, max_age_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._js = js
        self._max_age_s = max_age_s
        self._clock = clock
        self._counted: dict[str, tuple[int, float]] = {}  # tenant -> (count, when)

    async def count(self, tenant: str) -> int:
        now = self._clock()
        known = self._counted.get(tenant)
        if known is None or now - known[1] > self._max_age_s:
            info = await self._js.stream_info(JOBS_STREAM, subjects_filter=f"jobs.{tenant}.>")
            known = (len(info.state.subjects or {}), now)
            self._counted[tenant] = known
        return known[0]

    def accepted(self, tenant: str) -> None:
        """Count a job this gateway just stored (``count`` ran first, so it is known)."""
        count, when = self._counted[tenant]
        self._counted[tenant] = (count + 1, when)


class Gateway:
    def __init__(self, js: JetStreamContext, *, max_queued_per_tenant: int = 10_000,
                 counts: QueueCounts | None = None) -> None:
        self._js = js
        self._max_queued = max_queued_per_tenant
        self._counts = counts or QueueCounts(js)
        self._cache = ResultCache(js)
        self._sub: Subscription | None = None

    async def start(self, nc: Client) -> None:
        """Serving once this returns: the server has the subscription (a submit sent right
        after would otherwise meet "no responders")."""
        await self._cache.open()
        self._sub = await nc.subscribe("submit.*.*.*", queue=_QUEUE_GROUP, cb=self._on_submit)
        await nc.flush()

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()

    async def _on_submit(self, msg: Msg) -> None:
        reply = await self.submit(msg.subject, msg.data)
        if msg.reply:
            try:
                await msg.respond(encode_submit_reply(reply))
            except nats.errors.Error as exc:
                logger.warning("submit reply lost: {error}", error=str(exc))

    async def _queued(self, tenant: str, operation: str, job_id: str) -> bool:
        """Is this very job in JOBS already? Then a resubmit (say, after a lost reply) is
        a duplicate, not a new job over the quota."""
        try:
            await self._js.get_last_msg(JOBS_STREAM, job_subject(tenant, operation, job_id))
        except NotFoundError:
            return False
        return True

    async def _note_webhook(self, tenant: str, operation: str, job_id: str,
                            job: JobRequest) -> SubmitReply | None:
        """A job that names a webhook: its URL kept for the delivery of its outcome (before
        the job is queued, so even an instant outcome finds it). Refused when the tenant has
        no secret to sign with."""
        webhook = job.webhook
        if webhook is None:
            return None
        hooks = await tenant_hooks(await self._js.key_value(WEBHOOK_SETTINGS_BUCKET), tenant)
        if not hooks.secret:
            return SubmitReply(ok=False, job_id=job_id, operation=operation,
                               code="webhook_unconfigured", message=(
                                   f"tenant {tenant} has no webhook secret to sign with: the "
                                   "operator sets one with `vidfleet webhooks set`"))
        urls = await self._js.key_value(WEBHOOK_JOBS_BUCKET)
        await urls.put(job_url_key(tenant, job_id), webhook.encode())
        return None

    async def _served(self, tenant: str, operation: str, job_id: str,
                      key: str) -> bool | None:
        """True: answered from the result cache (controller/result_cache.py). False: the id
        is a job that ran or was served already, so this is a duplicate. None: queue it (no
        hit, or the id is in JOBS, where storing it again makes it the duplicate)."""
        entry = await self._cache.hit(tenant, key)
        if entry is None or await self._queued(tenant, operation, job_id):
            return None
        return await self._cache.serve(tenant, operation, job_id, entry)

    async def submit(self, subject: str, body: bytes) -> SubmitReply:
        checked = check_submit(subject, body)
        if isinstance(checked, SubmitReply):
            logger.info("submit refused on {subject}: {code}", subject=subject[:200],
                        code=checked.code)
            return checked
        tenant, operation, job_id, job = checked
        log = logger.bind(tenant=tenant, job_id=job_id)
        try:
            queued = await self._counts.count(tenant)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("JOBS did not answer: {error}", error=str(exc) or type(exc).__name__)
            return SubmitReply(ok=False, job_id=job_id, operation=operation, code="unavailable",
                               message="the job queue did not answer; submit again")
        if queued >= self._max_queued and not await self._queued(tenant, operation, job_id):
            return SubmitReply(ok=False, job_id=job_id, operation=operation,
                               code="quota_exceeded", message=(
                                   f"tenant {tenant} has {queued} jobs queued or running, "
                                   f"its limit is {self._max_queued}: submit again when "
                                   "some have finished"))
        try:
            if (refused := await self._note_webhook(tenant, operation, job_id, job)):
                return refused
            headers = {"Nats-Msg-Id": f"{tenant}.{job_id}"}
            if (key := await self._cache.key_of(tenant, operation, job)) is not None:
                if (served := await self._served(tenant, operation, job_id, key)) is not None:
                    return SubmitReply(ok=True, job_id=job_id, operation=operation,
                                       cached=served, duplicate=not served)
                headers[CACHE_KEY_HEADER] = key
            ack = await self._js.publish(job_subject(tenant, operation, job_id), body,
                                         headers=headers)
        except APIError as exc:
            # 10077 is both "this job id is still queued" (per subject) and "the queue is
            # full"; mistaking the second for the first would drop a job silently.
            if exc.err_code == _LIMIT_REACHED and "per subject" in (exc.description or ""):
                return SubmitReply(ok=True, job_id=job_id, operation=operation, duplicate=True)
            log.warning("JOBS refused a job: {error}", error=exc.description)
            return SubmitReply(ok=False, job_id=job_id, operation=operation, code="queue_full",
                               message=f"the queue refused job {job_id}: {exc.description}")
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("JOBS did not answer: {error}", error=str(exc) or type(exc).__name__)
            return SubmitReply(ok=False, job_id=job_id, operation=operation, code="unavailable",
                               message="the job queue did not answer; submit again")
        if not ack.duplicate:
            self._counts.accepted(tenant)
            log.info("job queued ({operation})", operation=operation)
        return SubmitReply(ok=True, job_id=job_id, operation=operation,
                           duplicate=bool(ack.duplicate), stream_seq=ack.seq)
