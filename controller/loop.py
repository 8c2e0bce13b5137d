"""The controller loop: observe -> reconcile -> decide -> act, every ``tick_s``.

Observe: the provider's instance list (our label prefix), the backlog from the consumer
leader, heartbeats, measured speeds, offers (searched only when renting could follow).
Reconcile (pure, controller/reconcile.py) against the fleet KV. Decide (pure,
controller/policy.py). Act: rent (record first, then create; never a blind retry), drain
(a command to the agent), destroy (record, then terminate until the provider stops listing
it). Publish the summary and the controller heartbeat the agents' dead-man switch listens for.

The costly mistakes this guards against: renting twice for one need (a record exists from
before the create call, and booting machines count), destroying a busy machine (only drained
ones with a confirmed empty hand are destroyed), and trusting a provider outage as an empty
fleet (reconcile refuses it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec
import nats.errors
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg

from broker.auth import AuthKeys
from broker.auth_store import AuthRecordUnreadable, publish_accounts
from broker.fleet import ControllerBeat, FleetInstance, FleetSummary, encode
from broker.subjects import CONTROLLER_HEARTBEAT_SUBJECT
from broker.url_guard import parse_networks
from controller.attribution import Attribution
from controller.config import ControllerConfig
from controller.credentials import CredentialAuthority
from controller.dispatcher import Dispatcher
from controller.estimate import ArrivalRate
from controller.fleet_store import FleetStore
from controller.gateway import Gateway
from controller.machines import Machines
from controller.metrics import Metrics
from controller.observe import Backlog, HeartbeatBook, OfferBook, SpeedBook, read_backlog
from controller.policy import Policy, Snapshot, Unmet, decide, objective, wants_offers
from controller.providers.base import InstanceInfo, Provider, ProviderError
from controller.reconcile import Reconciled, reconcile, snapshot_instances
from controller.sizing import warm_note
from controller.spend import ProviderBill, SpendMeter
from controller.waiters import wait_any
from controller.webhooks import WebhookSender

__all__ = ["Controller"]


class Controller:
    def __init__(self, *, nc: Client, provider: Provider, config: ControllerConfig,
                 policy: Policy, agent_env: dict[str, str] | None = None,
                 auth: AuthKeys | None = None, system: Client | None = None,
                 clock: Callable[[], float] = time.time, metrics: Metrics | None = None) -> None:
        """With ``auth`` (and ``system``, a system-account connection for revocations) every
        machine gets its own expiring agent credentials; without, agents connect as they can.
        ``metrics``: where the figures go (the caller serves them)."""
        self._nc = nc
        self._system = system
        self._authority = CredentialAuthority(
            auth, agent_lifetime_s=config.agent_credentials_s, known_agent=self._may_renew,
            clock=clock) if auth is not None else None
        self._js = nc.jetstream()
        self._provider = provider
        self._config = config
        self._policy = policy
        self._agent_env = dict(agent_env or {})
        self._clock = clock
        self._metrics = metrics or Metrics()
        self._heard_since = clock()  # heartbeats before this were not heard by us
        self._reconnects = 0
        self._dispatcher = Dispatcher(
            self._js, clock=clock, price_of=self._price_of, max_slots=config.slots,
            dead_letter_tenant_max_bytes=int(config.dead_letter_inputs_per_tenant_gb * 2**30))
        self._beats = HeartbeatBook(clock, holds=self._dispatcher.holds)
        self._speeds = SpeedBook(self._gpu_of)
        self._arrivals = ArrivalRate()
        self._unmet = self._pool = ""  # the last tick's lack, and warm pool, for vidfleet status
        self._offers = OfferBook(provider, ttl_s=provider.offers_ttl_s)
        self._alarms: list[str] = []
        # Set when a machine could not start our image (registry refused it, no such image):
        # another machine would fail the same way, so renting stops until a restart.
        self._paused: str | None = None
        self._store: FleetStore | None = None
        self._machines: Machines | None = None
        self._meter: SpendMeter | None = None
        self._bill: ProviderBill | None = None

    @property
    def _records(self) -> dict[str, FleetInstance]:
        return self._machines.records if self._machines is not None else {}

    def _may_renew(self, agent_id: str) -> str | None:
        rec = self._records.get(agent_id)
        return rec.agent_key if rec is not None and rec.state != "destroying" else None

    def _price_of(self, agent_id: str) -> float | None:
        rec = self._records.get(agent_id)
        return rec.price_per_hour if rec else None

    def _gpu_of(self, agent_id: str) -> str | None:
        rec = self._records.get(agent_id)
        return rec.gpu_name if rec else None

    async def run(self, stop: asyncio.Event,
                  wind_down: Callable[[], Awaitable[None]] | None = None) -> None:
        """Serve until ``stop``. ``wind_down`` runs after the loop and before the bus services
        (gateway, dispatcher, renewals) stop: local agents finishing their jobs still need
        the dispatcher to hear their outcomes."""
        self._store = await FleetStore.open(self._js)
        self._machines = Machines(
            nc=self._nc, provider=self._provider, config=self._config, store=self._store,
            records=await self._store.load(), offers=self._offers, authority=self._authority,
            system=self._system, agent_env=self._agent_env, forget_beat=self._beats.forget,
            clock=self._clock, metrics=self._metrics)
        last = await self._store.summary()
        # Resume from the last summary: the first accrual also charges the time this
        # controller was down, at the rate of the machines on record.
        self._meter = SpendMeter(now=last.at if last else self._clock(),
                                 day=last.day if last else None,
                                 spent=last.spent_today if last else 0.0)
        self._dispatcher.attribution = Attribution(
            now=self._clock(), day=last.day if last else None,
            ended=last.attributed_ended_today if last else 0.0)
        self._bill = ProviderBill(self._provider.account_credit,
                                  day=last.day if last else None,
                                  credit_at_day_start=last.credit_at_day_start if last else None)
        gateway = Gateway(self._js,
                          max_queued_per_tenant=self._config.max_queued_jobs_per_tenant)
        await gateway.start(self._nc)  # before anything slow: submits wait on it
        await self._dispatcher.start(self._nc)
        await self._metrics.follow(self._nc)
        webhooks = WebhookSender(
            self._js, allowed=parse_networks(self._config.webhook_allow_networks),
            retry_base_s=self._config.webhook_retry_base_s, clock=self._clock)
        await webhooks.start()
        await self._beats.start(self._nc)
        await self._speeds.start(self._nc)
        if self._authority is not None:
            await self._authority.serve_renewals(self._nc)
            if self._system is not None:  # a restarted server may have lost revocations
                try:
                    await publish_accounts(self._js, self._system, self._authority.keys)
                except AuthRecordUnreadable as exc:  # the server keeps what it has
                    logger.error("accounts not updated: {error}", error=str(exc))
        # A newly queued job wakes the loop at once: scaling from zero costs a boot, not a
        # boot plus a tick.
        wake = asyncio.Event()

        async def on_queued(_msg: Msg) -> None:
            wake.set()

        queued = await self._nc.subscribe("events.*.*.queued.*", cb=on_queued)
        # Stopping leases nothing more at once, not after the tick under way.
        stopping = asyncio.create_task(stop.wait())
        stopping.add_done_callback(lambda _: self._dispatcher.stop_granting())
        logger.info("controller running: provider {provider}, {n} machines on record",
                    provider=self._provider.name, n=len(self._records))
        try:
            while not stop.is_set():
                wake.clear()
                try:
                    await self.tick()
                except (nats.errors.Error, TimeoutError, OSError, ProviderError) as exc:
                    # The bus or the provider is in trouble (a leader change, a restart): a
                    # controller that exits here leaves every machine billing unsupervised.
                    self._metrics.tick_failures.inc()
                    logger.warning("tick failed, next one in {s}s: {error}",
                                   s=self._config.tick_s, error=str(exc) or type(exc).__name__)
                await wait_any(stop, wake, self._config.tick_s)
        finally:
            stopping.cancel()
            await queued.unsubscribe()
            if wind_down is not None:
                await wind_down()
            await gateway.stop()
            await self._dispatcher.stop()
            await self._metrics.stop()
            await webhooks.stop()
            if self._authority is not None:
                await self._authority.stop()
            await self._beats.stop()
            await self._speeds.stop()

    async def tick(self) -> None:
        now = self._clock()
        if self._nc.stats["reconnects"] != self._reconnects:
            # Heartbeats sent while we were cut off never arrived: count from now, or every
            # machine reads as silent and is destroyed mid-job.
            self._reconnects = self._nc.stats["reconnects"]
            self._heard_since = now
        listed = await self._list()
        if listed is not None:
            # Only a controller that can see its machines keeps the agents' dead-man switch
            # quiet; one that cannot act (say, a revoked provider key) lets idle agents go.
            await self._beat(now)
        state = reconcile(self._records, listed, self._beats.seen, now=now,
                          launch_grace_s=self._config.tick_s * 3 + 60.0,
                          heartbeat_timeout_s=self._policy.heartbeat_timeout_s,
                          lists_own_only=self._provider.lists_own_only,
                          listening_since=self._heard_since)
        self._alarms = list(state.alarms)
        if state.misconfigured and not self._paused:
            self._paused = state.misconfigured
            logger.error("renting paused until restart: {why}", why=self._paused)
        if self._paused:
            self._alarms.append(f"renting paused until restart: {self._paused}")
        assert self._machines is not None
        self._machines.alarms = self._alarms
        await self._machines.apply(state)
        await self._machines.destroy_offenders(self._beats.liars, self._dispatcher.flooders, now)
        await self._machines.retry_revocations()
        await self._machines.resend_drains()
        backlog = await self._backlog()
        if state.trusted and backlog is not None:
            await self._decide_and_act(now, backlog, state)
        await self._publish_summary(now, backlog)

    async def _beat(self, now: float) -> None:
        beat = ControllerBeat(at=now, interval_s=self._config.tick_s)
        await self._nc.publish(CONTROLLER_HEARTBEAT_SUBJECT, encode(beat))

    async def _list(self) -> list[InstanceInfo] | None:
        try:
            return await self._provider.list_instances(self._config.label_prefix)
        except ProviderError as exc:
            logger.warning("provider list failed: {error}", error=str(exc))
            return None

    async def _backlog(self) -> Backlog | None:
        try:
            return await read_backlog(self._js)
        except (nats.errors.Error, TimeoutError) as exc:  # skip deciding this tick
            self._alarms.append(f"backlog unreadable: {type(exc).__name__}: {exc}")
            return None

    async def _decide_and_act(self, now: float, backlog: Backlog, state: Reconciled) -> None:
        machines = self._machines
        assert machines is not None
        instances = snapshot_instances(self._records, self._beats.seen,
                                       heard_since=self._heard_since, holds=self._dispatcher.holds)
        self._arrivals.observe(now, backlog.submitted)
        assert self._meter is not None
        snap = Snapshot(now=now, queued_jobs=backlog.queued_jobs,
                        running_jobs=backlog.running_jobs,
                        backlog_work_s=self._speeds.work_s(
                            backlog, self._dispatcher.running_for_s()), instances=instances,
                        spent_today=self._meter.spent,
                        failed_machines=frozenset(m for m, t in machines.avoid.items()
                                                  if t > now),
                        last_rent_at=machines.last_rent_at, gpu_speed=dict(self._speeds.gpu_speed),
                        mean_job_s=self._speeds.times.mean(),
                        arrivals_per_s=self._arrivals.per_s(),
                        boot_s=machines.boots.expected(), boots=machines.boots.seen(),
                        heard_since=self._heard_since, outbids=machines.outbid_rates())
        blocked = state.rent_blocked or self._paused
        if wants_offers(snap, self._policy) and not blocked:
            offers = await self._offers.current_or_none(now, self._alarms)
            snap = msgspec.structs.replace(snap, offers=offers)
        self._unmet, self._pool = "", warm_note(snap, self._policy)
        for action in decide(snap, self._policy):
            if isinstance(action, Unmet):
                self._unmet = "" if blocked else f"{action.machines} more machines: {action.reason}"
            else:
                await machines.act(action, now)

    async def _publish_summary(self, now: float, backlog: Backlog | None) -> None:
        assert self._store is not None and self._meter is not None and self._bill is not None
        rate = sum(r.price_per_hour for r in self._records.values())
        spent = self._meter.accrue(rate, now)
        told = await self._bill.today(now, billing=bool(self._records))
        billed, by_provider = (spent, False) if told is None else (told, True)
        attributed, attributed_rate = self._dispatcher.attributed()
        for alarm in self._alarms:
            logger.warning("alarm: {alarm}", alarm=alarm)
        summary = FleetSummary(at=now, provider=self._provider.name,
            queued_jobs=backlog.queued_jobs if backlog else -1,
            running_jobs=backlog.running_jobs if backlog else -1,
            backlog_work_s=(self._speeds.work_s(backlog, self._dispatcher.running_for_s())
                            if backlog else -1.0),
            spend_per_hour=rate, spent_today=spent, day=self._meter.day,
            max_spend_per_hour=self._policy.max_price_per_hour,
            max_spend_per_day=self._policy.max_spend_per_day, alarms=self._alarms,
            objective=objective(self._policy) + self._pool, unmet=self._unmet,
            outbids_per_hour=self._machines.outbid_rates().by_model if self._machines else {},
            billed_today=round(billed, 6), billed_by_provider=by_provider,
            attributed_today=round(attributed, 6),
            unattributed_today=round(billed - attributed, 6),
            unattributed_per_hour=round(rate - attributed_rate, 6),
            attributed_ended_today=self._dispatcher.attribution.ended_today,
            credit_at_day_start=self._bill.credit_at_day_start)
        await self._store.put_summary(summary)
        await self._metrics.observe_tick(
            summary=summary, records=self._records.values(), letters=self._dispatcher.letters,
            beats=self._beats.heard(self._policy.heartbeat_timeout_s), now=now)

