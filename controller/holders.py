"""The holder's side door: ``fleet.report.*``, ``fleet.input.*`` and ``fleet.upload.*``.

Each message is checked against the lease book (the subject names the agent; the server lets
an agent publish only under its own id) and handed to controller/reports.py or
controller/transfers.py. One agent's messages are handled in the order sent (its pipelined
chunks depend on it), different agents' at once: one slow JetStream call must not stall
every agent's lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import nats.errors
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from broker.dispatch import (
    JOB_HEADER,
    ReportReply,
    WorkReply,
    decode_input_request,
    decode_report,
    encode,
)
from broker.subjects import AGENT_ID_RE
from controller.leases import LeaseBook
from controller.reports import Reports
from controller.transfers import Transfers, refuse

__all__ = ["HolderDesk", "agent_of", "respond"]


class HolderDesk:
    def __init__(self, *, nc: Client, book: LeaseBook, reports: Reports,
                 transfers: Transfers, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._nc = nc
        self._book = book
        self._reports = reports
        self._transfers = transfers
        self._mono = monotonic
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    async def subscribe(self) -> list[Subscription]:
        return [await self._nc.subscribe("fleet.report.*", cb=self._ordered(self._on_report)),
                await self._nc.subscribe("fleet.upload.*", cb=self._ordered(self._on_upload)),
                await self._nc.subscribe("fleet.input.*", cb=self._ordered(self._on_input))]

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def lock(self, agent_id: str) -> asyncio.Lock:
        """Held while one of ``agent_id``'s messages is handled: whoever else changes its
        lease (a cancel) takes it too."""
        return self._locks.setdefault(agent_id, asyncio.Lock())

    def _ordered(self, handler: Callable[[Msg, str], Awaitable[ReportReply | None]]
               ) -> Callable[[Msg], Awaitable[None]]:
        """Each agent's messages in order, different agents' at once: one slow JetStream
        call must not stall every agent's lease."""
        async def on_msg(msg: Msg) -> None:
            agent_id = agent_of(msg.subject)
            if agent_id is None or not msg.reply:
                return

            async def run() -> None:
                async with self.lock(agent_id):
                    try:
                        reply = await handler(msg, agent_id)
                    except (nats.errors.Error, TimeoutError) as exc:
                        reply = ReportReply(ok=False, code="unavailable",
                                            message=f"{type(exc).__name__}: {exc}")
                    except Exception as exc:  # a bug: the agent retries, the log says why
                        logger.exception("handling {subject} failed", subject=msg.subject)
                        reply = ReportReply(ok=False, code="unavailable",
                                            message=f"dispatcher error: {type(exc).__name__}")
                if reply is not None:  # None: the handler answered itself
                    await respond(msg, reply)
            task = asyncio.create_task(run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return on_msg

    async def _on_report(self, msg: Msg, agent_id: str) -> ReportReply:
        try:
            report = decode_report(msg.data)
        except ValueError as exc:
            logger.warning("unreadable report from {agent}: {error}", agent=agent_id,
                           error=str(exc))
            return ReportReply(ok=False, code="invalid", message=f"unreadable report: {exc}")
        held = self._book.holder(agent_id, report.tenant, report.job_id)
        if held is None:
            logger.warning("{agent} reported on {tenant}/{job_id}, which it does not hold; "
                           "refused", agent=agent_id, tenant=report.tenant,
                           job_id=report.job_id)
            return ReportReply(ok=False, code="not_holder",
                               message="this job is not leased to you (any more)")
        held.heard_at = self._mono()
        return await self._reports.handle(held, report)

    # -- inputs and the result (controller/transfers.py moves the bytes) -------------------

    async def _on_input(self, msg: Msg, agent_id: str) -> None:
        """An input of the held job, chunk by chunk: the only objects an agent can read."""
        try:
            request = decode_input_request(msg.data)
        except ValueError as exc:
            return await refuse(self._nc, msg, f"invalid: unreadable input request: {exc}")
        held = self._book.holder(agent_id, request.tenant, request.job_id)
        if held is None:
            return await refuse(self._nc, msg, "not_holder: this job is not leased to you")
        held.heard_at = self._mono()
        await self._transfers.serve_input(self._nc, msg, held, request)

    async def _on_upload(self, msg: Msg, agent_id: str) -> ReportReply:
        tenant, _, job_id = (msg.headers or {}).get(JOB_HEADER, "").partition(".")
        held = self._book.holder(agent_id, tenant, job_id)
        if held is None:
            return ReportReply(ok=False, code="not_holder",
                               message="this job is not leased to you (any more)")
        held.heard_at = self._mono()
        return await self._transfers.take_chunk(msg, held)

    # -- helpers ---------------------------------------------------------------------------



def agent_of(subject: str) -> str | None:
    """The agent id a ``fleet.<service>.<agent_id>`` subject names, if it is a valid one."""
    agent_id = subject.rsplit(".", 1)[-1]
    return agent_id if AGENT_ID_RE.match(agent_id) else None


async def respond(msg: Msg, reply: WorkReply | ReportReply) -> None:
    """Answer a request; a requester that is gone loses nothing (it asks again)."""
    with contextlib.suppress(nats.errors.Error):
        await msg.respond(encode(reply))
