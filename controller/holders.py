"""The holder's side door: ``fleet.report.*``, ``fleet.input.*`` and ``fleet.upload.*``.

Each message is checked against the lease book (the subject names the agent; the server lets
an agent publish only under its own id) and handed to controller/reports.py or
controller/transfers.py. One agent's messages are handled in the order sent (its pipelined
chunks depend on it), different agents' at once: one slow JetStream call must not stall
every agent's lease.

An agent has at most ``MAX_UNANSWERED_PER_SLOT`` messages per slot waiting here: our agent
never has more in flight (two inputs' windows of chunk requests, then an upload's window, and
its reports), and without a bound a stolen credential that sends without waiting for answers
would pile its chunks up in the controller's memory until it is killed. Past the bound each
message is answered "unavailable" at once; refused ten times the bound within 10 s, the
agent lands in ``flooders``, and the controller destroys its machine, which revokes its
credentials. (A slow dispatcher alone must not condemn a fleet: its agents' requests pile up
too, but they wait for their answers.)
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
    MAX_UNANSWERED_PER_SLOT,
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

# Refusals that make a flood: ten times the bound within 10 s. Our agent passes the bound only
# when the dispatcher is slow (a JetStream outage: its requests wait, time out after 10 s and
# are sent again), and then sends at most its windows again per timeout; a sender that does
# not wait for answers is refused thousands of times a second.
_FLOOD_TIMES = 10
_FLOOD_S = 10.0


class HolderDesk:
    def __init__(self, *, nc: Client, book: LeaseBook, reports: Reports,
                 transfers: Transfers, monotonic: Callable[[], float] = time.monotonic,
                 max_slots: int = 1, flooders: set[str] | None = None) -> None:
        """``flooders``: where agents that sent more at once than the bound are put."""
        self._nc = nc
        self._book = book
        self._reports = reports
        self._transfers = transfers
        self._mono = monotonic
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiting: dict[str, int] = {}  # messages taken, not yet answered, by agent
        self._refused: dict[str, tuple[float, int]] = {}  # (since, refusals) by agent
        self.most_waiting = MAX_UNANSWERED_PER_SLOT * max_slots
        self.flooders = flooders if flooders is not None else set()

    async def subscribe(self) -> list[Subscription]:
        return [await self._nc.subscribe("fleet.report.*", cb=self._ordered(self._on_report)),
                await self._nc.subscribe("fleet.upload.*", cb=self._ordered(self._on_upload)),
                await self._nc.subscribe("fleet.input.*",
                                         cb=self._ordered(self._on_input, self._input_busy))]

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def lock(self, agent_id: str) -> asyncio.Lock:
        """Held while one of ``agent_id``'s messages is handled: whoever else changes its
        lease (a cancel) takes it too."""
        return self._locks.setdefault(agent_id, asyncio.Lock())

    def _ordered(self, handler: Callable[[Msg, str], Awaitable[ReportReply | None]],
                 busy: Callable[[Msg, str], Awaitable[None]] | None = None
                 ) -> Callable[[Msg], Awaitable[None]]:
        """Each agent's messages in order, different agents' at once: one slow JetStream
        call must not stall every agent's lease. ``busy`` answers a message over the bound."""
        async def on_msg(msg: Msg) -> None:
            agent_id = agent_of(msg.subject)
            if agent_id is None or not msg.reply:
                return
            if self._waiting.get(agent_id, 0) >= self.most_waiting:
                return await self._flooded(msg, agent_id, busy)
            self._waiting[agent_id] = self._waiting.get(agent_id, 0) + 1

            async def run() -> None:
                try:
                    async with self.lock(agent_id):
                        reply = await self._answer(handler, msg, agent_id)
                    if reply is not None:  # None: the handler answered itself
                        await respond(msg, reply)
                finally:
                    if (left := self._waiting.pop(agent_id) - 1) > 0:
                        self._waiting[agent_id] = left
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

    @staticmethod
    async def _answer(handler: Callable[[Msg, str], Awaitable[ReportReply | None]], msg: Msg,
                      agent_id: str) -> ReportReply | None:
        try:
            return await handler(msg, agent_id)
        except (nats.errors.Error, TimeoutError) as exc:
            return ReportReply(ok=False, code="unavailable",
                               message=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a bug: the agent retries, the log says why
            logger.exception("handling {subject} failed", subject=msg.subject)
            return ReportReply(ok=False, code="unavailable",
                               message=f"dispatcher error: {type(exc).__name__}")

    async def _flooded(self, msg: Msg, agent_id: str,
                       busy: Callable[[Msg, str], Awaitable[None]] | None) -> None:
        now = self._mono()
        since, count = self._refused.get(agent_id, (now, 0))
        since, count = (since, count + 1) if now - since < _FLOOD_S else (now, 1)
        self._refused[agent_id] = (since, count)
        if count >= _FLOOD_TIMES * self.most_waiting and agent_id not in self.flooders:
            logger.warning("{agent} sent {n} messages in {s:.0f} s past its {most} waiting, "
                           "which our agent never does: its machine is to be destroyed",
                           agent=agent_id, n=count, s=_FLOOD_S, most=self.most_waiting)
            self.flooders.add(agent_id)
        why = f"too many requests at once (at most {self.most_waiting})"
        if busy is not None:
            return await busy(msg, why)
        await respond(msg, ReportReply(ok=False, code="unavailable", message=why))

    async def _input_busy(self, msg: Msg, why: str) -> None:
        await refuse(self._nc, msg, f"unavailable: {why}")

    # -- helpers ---------------------------------------------------------------------------



def agent_of(subject: str) -> str | None:
    """The agent id a ``fleet.<service>.<agent_id>`` subject names, if it is a valid one."""
    agent_id = subject.rsplit(".", 1)[-1]
    return agent_id if AGENT_ID_RE.match(agent_id) else None


async def respond(msg: Msg, reply: WorkReply | ReportReply) -> None:
    """Answer a request; a requester that is gone loses nothing (it asks again)."""
    with contextlib.suppress(nats.errors.Error):
        await msg.respond(encode(reply))
