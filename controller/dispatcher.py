"""The dispatcher: the one consumer of JOBS. It hands each agent one job and records what
happens to it from that agent alone.

An agent's credentials are assumed stolen (its host can read them), so nothing an agent says is
written anywhere unless it is about the job this dispatcher leased to it. The lease is kept
here (and in KV ``leases``, so a controller restart does not cost the job in hand); the
JetStream delivery behind it is renewed only while its holder keeps reporting, and acked only
once its outcome is recorded. The protocol is in broker/dispatch.py.

What that buys, each an attack that now fails (tests/test_dispatch.py):
- an agent holds at most one job per slot, and at most ``max_slots`` slots whatever it
  declares; asking for another on a slot hands back that slot's job;
- a report or an upload about any other job is refused (``not_holder``);
- a job is acked only with its outcome recorded; a holder that goes quiet loses the job within
  ``ack_wait`` and it runs elsewhere;
- a result's digest and size are computed here from the bytes stored, not taken from the agent;
- a job's cost is its leases' machine time at the price the controller rented each machine at
  (controller/job_costs.py), not a figure an agent reports;
- an agent that floods the dispatcher, not waiting for answers, loses its machine (holders.py).

Because it holds the leases, it also answers a tenant's cancels and questions about its jobs
(controller/tenant_desk.py). The agents waiting for work are in controller/waiters.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import nats.errors
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from broker.dispatch import (
    Lease,
    WorkReply,
    WorkRequest,
    decode_work_request,
)
from broker.events import Started
from broker.jobstate import TERMINAL, JobStates, ensure_announced, retryable_failures
from broker.subjects import (
    CONTROLLER_PUBLISHER,
    JOB_COSTS_BUCKET,
    JOBS_CONSUMER,
    JOBS_STREAM,
    JOBSTATE_BUCKET,
    parse_job_subject,
    validate_job_id,
    validate_tenant,
)
from controller.attribution import Attribution
from controller.dead_letters import DeadLetters
from controller.holders import HolderDesk, agent_of, respond
from controller.job_costs import JobCosts
from controller.leases import LeaseBook, grant_of, lease_of
from controller.reaper import Reaper
from controller.reports import Reports
from controller.result_cache import ResultCache
from controller.tenant_desk import TenantDesk
from controller.transfers import Transfers
from controller.waiters import Waiters

__all__ = ["Dispatcher"]

_STALE_HOLDS = 10  # ack_waits of silence after which a lease record is dropped


class Dispatcher:
    def __init__(self, js: JetStreamContext, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 price_of: Callable[[str], float | None] | None = None,
                 dead_letter_tenant_max_bytes: int = 2**30, max_slots: int = 1) -> None:
        """``price_of(agent_id)``: the price the controller rented that agent's machine at
        (None: not one of its machines, which costs nothing). Without it (no controller: tests
        and benchmarks), the price an agent's work request states is used. ``max_slots``:
        the most jobs one agent may hold at once; each pays its share of the price."""
        self._js = js
        self._price_of = price_of
        # Jobs that fail for good: kept by reports and the reaper, served to their tenants.
        self.letters = DeadLetters(js, tenant_max_bytes=dead_letter_tenant_max_bytes,
                                    clock=clock)
        self.cache = ResultCache(js, clock=clock)  # the gateway serves hits; reports fill it
        self._stopping = asyncio.Event()
        self._granting = True
        self._workers: list[asyncio.Task[None]] = []  # the reaper and the letters' keeper
        # Leases' share of today's bill; the controller resumes it from its last summary.
        self.attribution = Attribution(now=clock())
        self._clock = clock
        self._mono = monotonic
        self._waiters = Waiters(monotonic, max_slots=max_slots)
        self.flooders: set[str] = set()  # agents that sent past the bound: destroy their machines
        self._subs: list[Subscription] = []
        self._psub: JetStreamContext.PullSubscription | None = None
        self._feeder: asyncio.Task[None] | None = None
        self._nc: Client | None = None
        self._states: JobStates | None = None
        self._leases: LeaseBook | None = None
        self._holders: HolderDesk | None = None
        self._tenants: TenantDesk | None = None
        self._costs: JobCosts | None = None
        self._ack_wait_s = 30.0
        self._max_deliver = 5

    # -- what the rest of the controller asks ---------------------------------------------

    def holds(self, agent_id: str) -> list[str]:
        """The jobs ``agent_id`` holds now, in any slot: what its heartbeat is checked by."""
        return self._leases.held_jobs(agent_id) if self._leases is not None else []

    def attributed(self) -> tuple[float, float]:
        """Machine time jobs paid for: dollars since UTC midnight, and dollars per hour now
        (the prices of the machines holding a job)."""
        now = self._clock()
        live = self._leases.live_leases() if self._leases is not None else []
        return (self.attribution.today(live, now), sum(lease.price_per_hour for lease in live))

    async def _lease_ended(self, lease: Lease, ended_at: float) -> None:
        self.attribution.lease_ended(lease, ended_at)
        assert self._costs is not None
        await self._costs.add(lease, ended_at)

    def stop_granting(self) -> None:
        """Lease no more jobs (the controller is stopping; its agents finish what they hold)."""
        self._granting = False

    def running_for_s(self) -> list[float]:
        """How long each job in hand has been held (for the backlog estimate)."""
        return self._leases.running_for_s(self._clock()) if self._leases is not None else []

    # -- life ------------------------------------------------------------------------------

    async def start(self, nc: Client) -> None:
        self._nc = nc
        self._states = JobStates(await self._js.key_value(JOBSTATE_BUCKET))
        info = await self._js.consumer_info(JOBS_STREAM, JOBS_CONSUMER)
        self._ack_wait_s = info.config.ack_wait or 30.0
        self._max_deliver = info.config.max_deliver or 5
        self._costs = JobCosts(await self._js.key_value(JOB_COSTS_BUCKET))
        self._leases = await LeaseBook.open(self._js, ack_wait_s=self._ack_wait_s,
                                            on_end=self._lease_ended, clock=self._clock,
                                            monotonic=self._mono)
        await self._leases.load()
        await self.letters.open()
        await self.cache.open()
        transfers = Transfers(self._js)
        self._holders = HolderDesk(nc=nc, book=self._leases, transfers=transfers,
                                   reports=Reports(js=self._js, nc=nc, states=self._states,
                                                   book=self._leases, transfers=transfers,
                                                   costs=self._costs, letters=self.letters,
                                                   cache=self.cache, clock=self._clock),
                                   monotonic=self._mono, max_slots=self._waiters.max_slots,
                                   flooders=self.flooders)
        self._tenants = await TenantDesk.open(
            js=self._js, nc=nc, states=self._states, book=self._leases, costs=self._costs,
            letters=self.letters, holder_lock=self._holders.lock, clock=self._clock)
        self._workers = [
            asyncio.create_task(Reaper(self._js, letters=self.letters,
                                       clock=self._clock).run(self._stopping)),
            asyncio.create_task(self.letters.run(self._stopping))]
        psub = await self._js.pull_subscribe_bind(consumer=JOBS_CONSUMER, stream=JOBS_STREAM)
        self._psub = psub
        self._subs = [await nc.subscribe("fleet.work.*", cb=self._on_work),
                      *await self._holders.subscribe(), *await self._tenants.subscribe()]
        await nc.flush()  # serving once this returns: an agent's next call finds us
        self._feeder = asyncio.create_task(self._feed(psub))
        logger.info("dispatcher serving {n} lease(s) on record", n=len(self._leases))

    async def stop(self) -> None:
        self._stopping.set()
        for task in (self._feeder, *self._workers):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, nats.errors.Error):
                    await task
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        if self._psub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._psub.unsubscribe()
        for desk in (self._holders, self._tenants):
            if desk is not None:
                desk.cancel()
        # Leases stay on record: the next dispatcher picks them up.

    # -- work requests ---------------------------------------------------------------------

    async def _on_work(self, msg: Msg) -> None:
        agent_id = agent_of(msg.subject)
        if agent_id is None or not msg.reply:
            return
        try:
            request = decode_work_request(msg.data) if msg.data else WorkRequest()
        except ValueError as exc:
            await respond(msg, WorkReply(error=f"unreadable work request: {exc}"))
            return
        if refused := self._waiters.refusal(agent_id, request):
            await respond(msg, WorkReply(error=refused))
            return
        share = self._price(agent_id, request.price_per_hour) / self._waiters.slots(agent_id)
        await self._waiters.withdraw(agent_id, request.slot)  # superseded by this one
        assert self._leases is not None and self._nc is not None
        await self._leases.hand_back(agent_id, request.slot, self._nc)  # one job per slot
        if request.wait_s <= 0:  # "I no longer want work": answered, nothing granted
            await respond(msg, WorkReply())
            return
        await self.cache.note_build(request.build)
        self._waiters.add(msg, agent_id, request.slot, request.wait_s, share)

    def _price(self, agent_id: str, stated: float) -> float:
        """An agent's credentials may be stolen: its own word on its price would let it
        inflate the cost of every job it holds. The controller's record is the truth."""
        if self._price_of is None:
            return max(0.0, stated)
        return self._price_of(agent_id) or 0.0

    async def _feed(self, psub: JetStreamContext.PullSubscription) -> None:
        """Pull one job whenever an agent is waiting, and hand it to the longest waiter.
        Nothing here may end the loop: without it no job would ever start again."""
        while True:
            try:
                await self._feed_once(psub)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("dispatching failed; going on in 1 s")
                await asyncio.sleep(1.0)

    async def _feed_once(self, psub: JetStreamContext.PullSubscription) -> None:
        assert self._leases is not None
        await self._waiters.expire(holding=self._leases.holders())
        await self._leases.forget_stale(_STALE_HOLDS * self._ack_wait_s)
        if not self._granting:  # stopping: work requests run out unanswered
            await asyncio.sleep(0.2)
            return
        if not self._waiters:
            # Wake now and then anyway: the stale-lease sweep runs here.
            await self._waiters.someone(self._ack_wait_s)
            return
        try:
            msgs = await psub.fetch(
                1, timeout=max(0.2, min(2.0, self._waiters.first_deadline_s())))
        except TimeoutError:
            return
        except nats.errors.Error as exc:
            logger.warning("job fetch failed, retrying: {error}", error=str(exc))
            await asyncio.sleep(1.0)
            return
        for job in msgs:
            try:
                await self._dispatch(job)
            except (nats.errors.Error, TimeoutError) as exc:
                # Not acked or granted: it comes back after ack_wait.
                logger.warning("dispatching {subject} failed: {error}",
                               subject=job.subject, error=str(exc) or type(exc).__name__)

    async def _dispatch(self, job: Msg) -> None:
        assert self._states is not None
        try:
            tenant, operation, job_id = parse_job_subject(job.subject)
            validate_tenant(tenant)
            validate_job_id(job_id)
        except ValueError as exc:
            # Only the gateway writes JOBS, and it checks all three: loud, and dropped.
            logger.error("job on {subject} dropped: {error}", subject=job.subject,
                         error=str(exc))
            await job.term()
            return
        state = await self._states.get(tenant, job_id)
        if isinstance(state, TERMINAL):
            # Ended already (a resubmit, or a redelivery after the outcome was recorded).
            await ensure_announced(self._js, state, CONTROLLER_PUBLISHER)
            await job.ack_sync()
            return
        assert self._leases is not None
        # Attempts are numbered past every one that started (a broker restart can make the
        # consumer forget deliveries, and a number used twice would reuse a result name).
        ran = [state.attempt if isinstance(state, Started) else 0]
        ran += await self._leases.void(tenant, job_id)  # an older delivery's leases
        waiter = self._waiters.next()
        if waiter is None:  # everyone gave up while it was fetched: back to the queue
            await job.nak()
            return
        lease = lease_of(job, tenant=tenant, operation=operation, job_id=job_id,
                         agent_id=waiter.agent_id, price_per_hour=waiter.price_per_hour,
                         now=self._clock(), after=max(ran), slot=waiter.slot)
        await self._leases.grant(lease)
        grant = grant_of(lease, job, max_deliver=self._max_deliver,
                         failures=await retryable_failures(self._js, tenant, job_id),
                         hold_every_s=self._ack_wait_s / 3)
        await respond(waiter.msg, WorkReply(grant=grant))
        logger.bind(tenant=tenant, job_id=job_id, agent_id=waiter.agent_id).info(
            "job {job} (attempt {n}) leased to {agent}", job=job_id, n=lease.attempt,
            agent=waiter.agent_id)
