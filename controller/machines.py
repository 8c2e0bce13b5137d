"""What the controller does to machines, and its record of them: the fleet records (memory and
KV kept in step), rent, drain, destroy, and the revocations that follow a destroy.

Every step that spends or saves money is here, in the order that keeps a crash harmless: a
rent's record is written before the provider is asked (a crash mid-create is found by label);
a drain is recorded before the command goes out; a destroy is recorded, the agent's key queued
for revocation, then the provider told, again every ``_TERMINATE_RETRY_S`` until it stops
listing the machine.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable

from loguru import logger
from msgspec import structs
from nats.aio.client import Client

from broker.fleet import AgentCommand, FleetInstance, encode
from broker.subjects import agent_control_subject
from controller.config import ControllerConfig
from controller.credentials import CredentialAuthority, agent_env
from controller.estimate import BootTimes, OutbidRates, Outbids
from controller.fleet_store import FleetStore
from controller.metrics import Metrics
from controller.observe import OfferBook
from controller.policy import Action, Destroy, Drain, Rent
from controller.providers.base import NoCapacity, Provider, ProviderError
from controller.reconcile import OUTBID, Reconciled, Terminate

__all__ = ["Machines"]

_AVOID_S = 24 * 3600.0  # a machine that failed to boot is not rented again for a day
_TERMINATE_RETRY_S = 15.0  # a destroying machine still listed gets terminate again this often


class Machines:
    def __init__(self, *, nc: Client, provider: Provider, config: ControllerConfig,
                 store: FleetStore, records: dict[str, FleetInstance], offers: OfferBook,
                 authority: CredentialAuthority | None, system: Client | None,
                 agent_env: dict[str, str], forget_beat: Callable[[str], None],
                 clock: Callable[[], float], metrics: Metrics) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._provider = provider
        self._config = config
        self._store = store
        self._offers = offers
        self._authority = authority
        self._system = system
        self._agent_env = agent_env
        self._forget_beat = forget_beat
        self._clock = clock
        self._metrics = metrics
        self.boots = BootTimes()  # what the policy expects of the next machine's boot
        self.outbids = Outbids()  # how often each GPU model is taken back (interruptible)
        self.records = records
        self.avoid: dict[int, float] = {}  # machine id -> avoid until
        self.last_rent_at: float | None = None
        self._last_terminate: dict[str, float] = {}
        self.alarms: list[str] = []  # the controller hands in this tick's list
        # A crash between "destroying" and its revocation must not leave the key valid.
        for r in records.values():
            if r.state == "destroying" and r.agent_key:
                self.queue_revocation(r.label, r.agent_key)

    async def apply(self, state: Reconciled) -> None:
        previous, self.records = self.records, dict(state.records)
        for label in state.forget:
            logger.info("machine gone; record removed", instance_id=label)
            gone = previous.get(label)
            if gone is not None and gone.state != "destroying":
                self._ended(gone)
                if gone.agent_key:
                    self.queue_revocation(label, gone.agent_key)  # vanished: its key must go
            await self._store.delete(label)
            self._forget_beat(label)
            self._last_terminate.pop(label, None)
        for label, rec in state.records.items():
            old = previous.get(label)
            newly_destroying = rec.state == "destroying" and (old is None
                                                              or old.state != "destroying")
            if newly_destroying:
                self._ended(rec)
                if rec.agent_key:
                    self.queue_revocation(label, rec.agent_key)
            if newly_destroying and rec.first_heartbeat_at is None:
                self._metrics.rent_failed("boot_failed")  # the provider says it failed
            if old is not None and old.first_heartbeat_at is None and rec.first_heartbeat_at:
                self._metrics.booted(rec.first_heartbeat_at - rec.launched_at)
                self.boots.add(rec.first_heartbeat_at - rec.launched_at)
            if old != rec:
                await self._store.put(rec)
        for term in state.terminate:
            if term.label not in state.records:
                self._metrics.orphan_found(term.label)
            await self.terminate(term)

    async def terminate(self, term: Terminate) -> None:
        now = self._clock()
        if now - self._last_terminate.get(term.label, float("-inf")) < _TERMINATE_RETRY_S:
            return
        self._last_terminate[term.label] = now
        if term.avoid_machine is not None:
            self.avoid[term.avoid_machine] = now + _AVOID_S
        log = logger.bind(instance_id=term.label, provider_id=term.provider_id)
        log.info("destroying machine: {reason}", reason=term.reason)
        try:
            await self._provider.terminate(term.provider_id)
        except ProviderError as exc:
            log.warning("destroy failed, retried next tick: {error}", error=str(exc))

    async def destroy_offenders(self, liars: Iterable[str], flooders: Iterable[str],
                                now: float) -> None:
        """Machines whose agents misbehave go (their credentials revoked), and their hosts
        are avoided: one that keeps saying it is busy with a job it does not hold would never
        be scaled down; one that sends the dispatcher more at once than its slots need is a
        stolen credential trying to exhaust the controller (controller/holders.py)."""
        why = {agent_id: "claims to be busy with a job it does not hold" for agent_id in liars}
        why |= {agent_id: "floods the dispatcher without waiting for its answers"
                for agent_id in flooders}
        for agent_id, reason in sorted(why.items()):
            rec = self.records.get(agent_id)
            if rec is not None and rec.state != "destroying":
                await self.act(Destroy(instance_id=agent_id, avoid_machine=rec.machine_id,
                                       reason=reason), now)

    async def act(self, action: Action, now: float) -> None:
        if isinstance(action, Rent):
            await self._rent(action, now)
        elif isinstance(action, Drain):
            await self._drain(action)
        elif isinstance(action, Destroy):
            await self._destroy(action)

    async def _rent(self, action: Rent, now: float) -> None:
        offer = self._offers.take(action.offer_id)  # asked for once, whatever the answer
        if offer is None:
            return
        label = f"{self._config.label_prefix}{secrets.token_hex(6)}"
        env = {**self._agent_env, **self._config.agent_env(label, offer.price_per_hour)}
        agent_key = None
        if self._authority is not None:
            minted = self._authority.mint_agent(label)
            env |= agent_env(minted)
            agent_key = minted.public_key
        rec = FleetInstance(label=label, provider=self._provider.name, state="launching",
                            launched_at=now, price_per_hour=offer.price_per_hour,
                            machine_id=offer.machine_id, gpu_name=offer.gpu_name,
                            offer_id=offer.offer_id, agent_key=agent_key)
        await self._store.put(rec)  # the intent, before the provider hears of it
        self.records[label] = rec
        self.last_rent_at = now
        log = logger.bind(instance_id=label)
        log.info("renting {gpu} at ${price:.3f}/h (offer {offer})", gpu=offer.gpu_name,
                 price=offer.price_per_hour, offer=offer.offer_id)
        try:
            info = await self._provider.launch(offer, label=label, env=env)
        except NoCapacity as exc:
            log.info("offer gone, trying another next tick: {error}", error=str(exc))
            self._metrics.rent_failed("no_capacity")
            del self.records[label]
            await self._store.delete(label)
            return
        except ProviderError as exc:
            # Ambiguous: the machine may exist. The record stays "launching"; reconcile adopts
            # it by label, or forgets the record once the launch grace has passed.
            log.warning("rent failed; reconciling by label: {error}", error=str(exc))
            self._metrics.rent_failed("provider_error")
            return
        rec = structs.replace(rec, state="booting", provider_id=info.provider_id,
                              gpu_name=info.gpu_name or rec.gpu_name)
        self.records[label] = rec
        await self._store.put(rec)

    async def _drain(self, action: Drain) -> None:
        rec = self.records.get(action.instance_id)
        if rec is None or rec.state != "serving":
            return
        logger.bind(instance_id=rec.label).info("draining: {reason}", reason=action.reason)
        rec = structs.replace(rec, state="draining", reason=action.reason)
        await self._store.put(rec)  # first: if it fails, next tick drains again
        self.records[rec.label] = rec
        await self._nc.publish(agent_control_subject(rec.label),
                               encode(AgentCommand(command="drain", reason=action.reason)))

    async def _destroy(self, action: Destroy) -> None:
        rec = self.records.get(action.instance_id)
        if rec is None:
            return
        if rec.state != "destroying":
            if rec.first_heartbeat_at is None:
                self.boots.censored(self._clock() - rec.launched_at)  # it took at least this
                if action.avoid_machine is not None:
                    self._metrics.rent_failed("boot_deadline")  # never heard from in time
            rec = structs.replace(rec, state="destroying", reason=action.reason)
            self._ended(rec)
            self.records[rec.label] = rec
            if rec.agent_key:
                self.queue_revocation(rec.label, rec.agent_key)
            await self._store.put(rec)
            await self.retry_revocations()
        if action.avoid_machine is not None:
            self.avoid[action.avoid_machine] = self._clock() + _AVOID_S
        if rec.provider_id is not None:
            await self.terminate(Terminate(provider_id=rec.provider_id, label=rec.label,
                                            reason=action.reason))

    def outbid_rates(self) -> OutbidRates:
        now = self._clock()
        return self.outbids.rates((r.gpu_name, (now - r.launched_at) / 3600)
                                  for r in self.records.values() if r.state != "destroying")

    def _ended(self, rec: FleetInstance) -> None:
        """Once per machine, as it goes: its hours, and whether the market took it back."""
        self.outbids.ended(rec.gpu_name, (self._clock() - rec.launched_at) / 3600,
                           outbid=(rec.reason or "").startswith(OUTBID))

    def queue_revocation(self, label: str, user_key: str) -> None:
        if self._authority is not None:
            self._authority.queue_revocation(label, user_key)

    async def retry_revocations(self) -> None:
        if self._authority is not None and self._system is not None:
            alarm = await self._authority.flush_revocations(self._js, self._system)
            if alarm:
                self.alarms.append(alarm)

    async def resend_drains(self) -> None:
        """A drain command is fire-and-forget (core NATS): one sent while the agent was
        reconnecting is lost, and the machine would bill on as 'unconfirmed'. Repeat it until
        the agent says it is draining."""
        for rec in self.records.values():
            if rec.state == "draining" and rec.agent_state not in ("draining", "stopped"):
                await self._nc.publish(agent_control_subject(rec.label), encode(
                    AgentCommand(command="drain", reason=rec.reason or "")))
