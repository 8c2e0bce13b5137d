"""The tenants' door to the dispatcher: ``cancel.<tenant>.<job_id>`` (controller/cancels.py),
``query.<tenant>.>`` (controller/job_status.py) and ``deadletters.<tenant>.>``
(controller/dead_letter_desk.py).

The tenant in each subject is the server's word (each tenant account imports only its own), so
what is checked here is the shape of the request. Each query and dead-letter request is answered
in a task of its own: a listing, or a retry putting inputs back, takes a moment and must not
hold up the next request. Whatever fails is answered
``unavailable``, so the asker retries instead of waiting out a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import nats.errors
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from broker.dead_letters import DeadLetterReply
from broker.dead_letters import encode as encode_letters
from broker.jobstate import JobStates
from broker.queries import JobStatusReply
from broker.queries import encode as encode_query
from broker.subjects import parse_cancel_subject, validate_job_id, validate_tenant
from broker.submit import CancelReply, decode_cancel_request
from broker.submit import encode as encode_submit
from controller.cancels import Cancels
from controller.dead_letter_desk import DeadLetterDesk
from controller.dead_letters import DeadLetters
from controller.job_costs import JobCosts
from controller.job_status import JobQueries
from controller.leases import LeaseBook

__all__ = ["TenantDesk"]


class TenantDesk:
    def __init__(self, *, nc: Client, cancels: Cancels, queries: JobQueries,
                 letters: DeadLetterDesk) -> None:
        self._nc = nc
        self._cancels = cancels
        self._queries = queries
        self._letters = letters
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, *, js: JetStreamContext, nc: Client, states: JobStates,
                   book: LeaseBook, costs: JobCosts, letters: DeadLetters,
                   holder_lock: Callable[[str], asyncio.Lock],
                   clock: Callable[[], float]) -> TenantDesk:
        """The desk and what answers behind it, on the dispatcher's lease book and stores."""
        queries = JobQueries(js=js, nc=nc, states=states, book=book, costs=costs,
                             letters=letters, clock=clock)
        await queries.open()
        return cls(nc=nc, queries=queries,
                   cancels=Cancels(js=js, nc=nc, states=states, book=book, costs=costs,
                                   holder_lock=holder_lock, clock=clock),
                   letters=DeadLetterDesk(js=js, letters=letters, states=states, clock=clock))

    async def subscribe(self) -> list[Subscription]:
        return [await self._nc.subscribe("cancel.*.*", cb=self._on_cancel),
                await self._nc.subscribe("query.*.>", cb=self._on_query),
                await self._nc.subscribe("deadletters.*.>", cb=self._on_dead_letters)]

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
        async def answer() -> bytes:
            return encode_query(await self._queries.answer(msg.subject, msg.data))
        self._in_task(msg, answer, encode_query(JobStatusReply(
            ok=False, code="unavailable", message="the controller could not answer; ask again")))

    async def _on_dead_letters(self, msg: Msg) -> None:
        async def answer() -> bytes:
            return encode_letters(await self._letters.answer(msg.subject, msg.data))
        self._in_task(msg, answer, encode_letters(DeadLetterReply(
            ok=False, code="unavailable", message="the controller could not act; ask again")))

    def _in_task(self, msg: Msg, answer: Callable[[], Awaitable[bytes]],
                 unavailable: bytes) -> None:
        if not msg.reply:
            return

        async def respond() -> None:
            try:
                reply = await answer()
            except Exception:  # a bug or the bus in trouble: the asker hears it, the log why
                logger.exception("request on {subject} failed", subject=msg.subject)
                reply = unavailable
            with contextlib.suppress(nats.errors.Error):
                await msg.respond(reply)
        task = asyncio.create_task(respond())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
