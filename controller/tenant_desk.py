"""The tenants' door to the dispatcher: ``cancel.<tenant>.<job_id>`` (controller/cancels.py)
and ``query.<tenant>.>`` (controller/job_status.py).

The tenant in each subject is the server's word (each tenant account imports only its own), so
what is checked here is the shape of the request. Each query is answered in a task of its own:
a listing takes a moment, and must not hold up the next request. Whatever fails is answered
``unavailable``, so the asker retries instead of waiting out a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from broker.queries import JobStatusReply
from broker.queries import encode as encode_query
from broker.subjects import parse_cancel_subject, validate_job_id, validate_tenant
from broker.submit import CancelReply, decode_cancel_request
from broker.submit import encode as encode_submit
from controller.cancels import Cancels
from controller.job_status import JobQueries

__all__ = ["TenantDesk"]


class TenantDesk:
    def __init__(self, *, nc: Client, cancels: Cancels, queries: JobQueries) -> None:
        self._nc = nc
        self._cancels = cancels
        self._queries = queries
        self._tasks: set[asyncio.Task[None]] = set()

    async def subscribe(self) -> list[Subscription]:
        return [await self._nc.subscribe("cancel.*.*", cb=self._on_cancel),
                await self._nc.subscribe("query.*.>", cb=self._on_query)]

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _on_cancel(self, msg: Msg) -> None:
        reply = await self.cancel_request(msg.subject, msg.data)
        if msg.reply:
            with contextlib.suppress(nats.errors.Error):
                await msg.respond(encode_submit(reply))

    async def cancel_request(self, subject: str, body: bytes) -> CancelReply:
        """Answer one ``cancel.<tenant>.<job_id>``."""
        try:
            tenant, job_id = parse_cancel_subject(subject)
            validate_tenant(tenant)
            validate_job_id(job_id)
        except ValueError as exc:
            return CancelReply(ok=False, code="invalid_job_id", message=str(exc))
        try:
            request = decode_cancel_request(body)
        except ValueError as exc:
            return CancelReply(ok=False, job_id=job_id, code="invalid",
                               message=f"unreadable cancel request: {exc}")
        try:
            return await self._cancels.cancel(tenant, job_id, request.reason)
        except (nats.errors.Error, TimeoutError, RuntimeError) as exc:
            logger.warning("cancel of {tenant}/{job_id} failed: {error}", tenant=tenant,
                           job_id=job_id, error=str(exc) or type(exc).__name__)
            return CancelReply(ok=False, job_id=job_id, code="unavailable",
                               message="the job queue did not answer; cancel again")

    async def _on_query(self, msg: Msg) -> None:
        if not msg.reply:
            return

        async def answer() -> None:
            try:
                reply = await self._queries.answer(msg.subject, msg.data)
            except Exception:  # a bug: the asker hears it, and the log says why
                logger.exception("query {subject} failed", subject=msg.subject)
                reply = JobStatusReply(ok=False, code="unavailable",
                                       message="the controller could not answer; ask again")
            with contextlib.suppress(nats.errors.Error):
                await msg.respond(encode_query(reply))
        task = asyncio.create_task(answer())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
