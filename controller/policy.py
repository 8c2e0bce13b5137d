"""The scaling policy: a pure ``decide(snapshot, policy) -> actions``.

No clock, network or logger here: the loop around it observes (backlog from the JOBS consumer's
leader, heartbeats, the provider's instance list, spend) into a ``Snapshot``, calls
``decide``, and carries out the actions. Getting this wrong costs money both ways: renting
too eagerly (or twice for the same need, while a machine is still booting) bills idle GPUs;
destroying a busy machine kills a job mid-encode, so scale-down only ever drains idle ones
(only a day budget nearly spent drains busy ones, and they finish their job first; once it is
spent, whatever still runs is destroyed: a machine claiming to be busy cannot bill forever),
and destroys only booting machines no job needs, which have billed no GPU yet.

How many machines: controller/sizing.py; which offers: controller/ranking.py.
"""

from __future__ import annotations

from typing import Literal

from msgspec import Struct, field

from controller.estimate import PRIOR_JOB_S, OutbidRates
from controller.ranking import NO_NVENC_GPUS, has_nvenc, rank_offers
from controller.sizing import size_fleet

__all__ = [
    "NO_NVENC_GPUS",
    "Destroy",
    "Drain",
    "Instance",
    "Offer",
    "Policy",
    "Rent",
    "Snapshot",
    "Unmet",
    "decide",
    "has_nvenc",
    "objective",
    "rank_offers",
    "wants_offers",
]



class Offer(Struct, frozen=True, kw_only=True):
    offer_id: int
    machine_id: int
    gpu_name: str
    gpu_ram_mb: int
    price_per_hour: float  # dph_total: GPU plus the storage asked for
    reliability: float
    inet_down_mbps: float
    cuda_max_good: float
    # Interruptible: the per-machine bid a rent sends; price_per_hour is then that bid plus
    # the storage, what the machine bills while it runs (and what the caps count).
    bid_per_hour: float | None = None


class Instance(Struct, frozen=True, kw_only=True):
    instance_id: str
    machine_id: int
    price_per_hour: float
    state: Literal["booting", "idle", "busy", "draining"]
    launched_at: float
    last_heartbeat_at: float | None = None  # None: never heartbeated (still booting)
    idle_since: float | None = None
    job_id: str | None = None  # a job in hand (with several slots, one of them)
    jobs: int = 0  # jobs in hand (a busy machine counts as at least one)
    slots: int | None = None  # jobs it runs at once, as its agent chose; None: Policy.slots


class Snapshot(Struct, frozen=True, kw_only=True):
    now: float
    queued_jobs: int  # consumer num_pending, read from the stream's leader
    running_jobs: int  # consumer num_ack_pending
    backlog_work_s: float  # estimated encoder seconds for queued + running jobs
    instances: tuple[Instance, ...] = ()
    offers: tuple[Offer, ...] = ()
    spent_today: float = 0.0  # dollars since UTC midnight
    failed_machines: frozenset[int] = frozenset()  # machines that did not boot: avoid
    last_rent_at: float | None = None
    # Measured speed by GPU model (the offer's gpu_name), learned from results, in any one
    # unit (media seconds per second, say): only the ratios between models are used; a model
    # missing here is ranked by its generation's prior.
    gpu_speed: dict[str, float] = field(default_factory=dict)
    mean_job_s: float = PRIOR_JOB_S  # estimated machine seconds per job (controller/estimate.py)
    arrivals_per_s: float = 0.0  # jobs submitted per second lately, a batch not counted
    boot_s: float | None = None  # measured rent to first heartbeat; None: Policy.expected_boot_s
    boots: tuple[tuple[float, bool], ...] = ()  # BootTimes.seen(): the recent boots
    outbids: OutbidRates = field(default_factory=lambda: OutbidRates({}))  # learned, by model
    # When this controller began hearing heartbeats: a machine launched before it and not
    # heard yet may be up and idle, its record written before its first heartbeat.
    heard_since: float = 0.0


class Policy(Struct, frozen=True, kw_only=True):
    min_warm: int = 0
    max_instances: int = 4
    slots: int = 1  # jobs each machine runs at once (its agent's slots)
    target_drain_s: float = 600.0  # rent enough that the backlog drains within this
    # > 0: the wait objective instead (controller/sizing.py): rent enough that every queued
    # job is expected to start within this many seconds of now.
    target_wait_s: float = 0.0
    hedge: float = 0.0  # wait objective: booting machines rented per one a queue waits for, - 1
    burst_hedge: float = 0.0  # more of them while five or more are needed at once (sizing.py)
    warm_per_load: float = 0.0  # machines kept up per machine of measured load, rounded down
    warm_below_boot: bool = True  # keep machines up when rents come too late (sizing.py)
    idle_timeout_s: float = 300.0
    boot_deadline_s: float = 600.0  # no first heartbeat by then: destroy, avoid the machine
    heartbeat_timeout_s: float = 30.0  # a silent agent is gone
    rent_cooldown_s: float = 20.0
    max_price_per_hour: float = 5.0  # the whole fleet's burn rate
    max_spend_per_day: float = 50.0
    max_offer_price_per_hour: float = 1.0
    min_gpu_ram_mb: int = 8000
    min_reliability: float = 0.95
    min_inet_down_mbps: float = 100.0
    min_cuda: float = 11.0
    # Rent to first heartbeat, typically: a machine rented now adds only target_drain_s minus
    # this to the drain, so a burst from zero rents enough to drain within the target anyway.
    expected_boot_s: float = 90.0
    # When the day's budget left would last less than this at the current burn rate, the
    # whole fleet drains (busy machines finish their job first): the day cap holds as long as
    # no job runs longer than this.
    budget_reserve_s: float = 900.0


class Rent(Struct, frozen=True, kw_only=True, tag="rent"):
    offer_id: int
    machine_id: int
    price_per_hour: float


class Drain(Struct, frozen=True, kw_only=True, tag="drain"):
    instance_id: str
    reason: str = "idle past the timeout"  # or "the day's budget is spent" (busy ones too)


class Destroy(Struct, frozen=True, kw_only=True, tag="destroy"):
    instance_id: str
    reason: str
    avoid_machine: int | None = None  # the loop adds it to the failed machines


class Unmet(Struct, frozen=True, kw_only=True, tag="unmet"):
    """The objective needs machines the caps or the market do not allow: nothing to carry
    out, something to report (``vidfleet status``)."""

    machines: int  # how many more it needed
    reason: str


Action = Rent | Drain | Destroy | Unmet



def _dead(inst: Instance, snap: Snapshot, policy: Policy) -> str | None:
    if inst.last_heartbeat_at is None:
        if snap.now - inst.launched_at > policy.boot_deadline_s:
            return f"no heartbeat within the boot deadline ({policy.boot_deadline_s:.0f}s)"
        return None
    if snap.now - inst.last_heartbeat_at > policy.heartbeat_timeout_s:
        return f"silent for over {policy.heartbeat_timeout_s:.0f}s"
    return None


def _sort(snap: Snapshot, policy: Policy) -> tuple[list[Action], list[Instance],
                                                  list[Instance]]:
    """(destroys of dead and drained machines, live machines, draining ones still on a job)."""
    actions: list[Action] = []
    live: list[Instance] = []
    finishing: list[Instance] = []  # draining, still on their last job
    for inst in snap.instances:
        why = _dead(inst, snap, policy)
        if why:
            never_booted = inst.last_heartbeat_at is None
            actions.append(Destroy(instance_id=inst.instance_id, reason=why,
                                   avoid_machine=inst.machine_id if never_booted else None))
        elif inst.state == "draining":
            if inst.job_id is None:  # finished its last job: nothing left to lose
                actions.append(Destroy(instance_id=inst.instance_id, reason="drained"))
            else:
                finishing.append(inst)
        else:
            live.append(inst)
    return actions, live, finishing


def wants_offers(snap: Snapshot, policy: Policy) -> bool:
    """Whether ``decide`` would rent, offers permitting: the loop searches offers (a rate-
    limited call) only then."""
    _, live, _ = _sort(snap, policy)
    return size_fleet(snap, policy, live).rent > 0


def decide(snap: Snapshot, policy: Policy) -> list[Action]:
    actions, live, finishing = _sort(snap, policy)
    rate = sum(i.price_per_hour for i in snap.instances)
    if snap.spent_today >= policy.max_spend_per_day:
        return actions + _destroy_all(live + finishing)
    if snap.spent_today + rate * policy.budget_reserve_s / 3600 >= policy.max_spend_per_day:
        return actions + _stop_all(live)
    sizing = size_fleet(snap, policy, live)
    if sizing.surplus_booting:
        gone = set(sizing.surplus_booting)
        actions += [Destroy(instance_id=i, reason="booting, and no job needs it now")
                    for i in sizing.surplus_booting]
        live = [i for i in live if i.instance_id not in gone]
    if sizing.rent:
        rents = _rent(snap, policy, sizing.rent)
        actions += rents
        if len(rents) < sizing.rent and _cooled(snap, policy):
            actions.append(Unmet(machines=sizing.rent - len(rents) + sizing.short,
                                 reason=_capped_by(snap, policy, rents)))
    elif len(live) > sizing.keep:
        actions += _drain_idle(snap, policy, live, len(live) - sizing.keep)
    if sizing.short and not any(isinstance(a, Unmet) for a in actions):
        actions.append(Unmet(machines=sizing.short,
                             reason=f"max_instances ({policy.max_instances}) caps the fleet "
                                    f"({objective(policy)} needs more machines)"))
    return actions


def objective(policy: Policy) -> str:
    """What the policy aims at, in words (``vidfleet status`` shows it)."""
    if policy.target_wait_s > 0:
        return f"every queued job started within {policy.target_wait_s:.0f} s"
    return f"the backlog drained within {policy.target_drain_s:.0f} s"


def _capped_by(snap: Snapshot, policy: Policy, rents: list[Rent]) -> str:
    """Why ``_rent`` found fewer machines than asked (it was not cooling down)."""
    rate = sum(i.price_per_hour for i in snap.instances) + sum(r.price_per_hour for r in rents)
    taken = {r.offer_id for r in rents}
    ranked = [o for o in _ranked(snap, policy)
              if o.offer_id not in taken]
    if not ranked:
        why = "no offer meets the requirements"
    elif rate + ranked[0].price_per_hour > policy.max_price_per_hour:
        why = f"the hourly spend cap (${policy.max_price_per_hour:.2f}/h) allows no more"
    elif snap.spent_today + rate + ranked[0].price_per_hour > policy.max_spend_per_day:
        why = f"the day's spend cap (${policy.max_spend_per_day:.2f}) allows no more"
    else:
        why = "too few acceptable offers"
    return f"{why} ({objective(policy)} needs more machines)"


def _cooled(snap: Snapshot, policy: Policy) -> bool:
    return snap.last_rent_at is None or snap.now - snap.last_rent_at >= policy.rent_cooldown_s


def _stop_all(live: list[Instance]) -> list[Action]:
    """The day's budget is spent: booting machines go at once, the rest drain (a busy one
    finishes its job first, so no paid work is thrown away)."""
    why = "the day's budget is spent"
    return [Destroy(instance_id=i.instance_id, reason=why) if i.state == "booting"
            else Drain(instance_id=i.instance_id, reason=why) for i in live]


def _destroy_all(live: list[Instance]) -> list[Action]:
    """The day's budget is gone. The drain began ``budget_reserve_s`` of burn earlier; a
    machine still running now (a job longer than that, or an agent that claims to be busy
    forever) is destroyed: its job goes back to the queue for tomorrow, and the cap holds."""
    why = "the day's budget is spent and the machine was still running"
    return [Destroy(instance_id=i.instance_id, reason=why) for i in live]


def _ranked(snap: Snapshot, policy: Policy) -> list[Offer]:
    return rank_offers(snap.offers, policy, snap.failed_machines, snap.gpu_speed, snap.outbids,
                       snap.mean_job_s)


def _rent(snap: Snapshot, policy: Policy, count: int) -> list[Rent]:
    if not _cooled(snap, policy):
        return []
    rate = sum(i.price_per_hour for i in snap.instances)
    rents: list[Rent] = []
    for offer in _ranked(snap, policy):
        if len(rents) == count:
            break
        if rate + offer.price_per_hour > policy.max_price_per_hour:
            continue
        # The day cap holds if the fleet, this machine included, ran for another hour.
        if snap.spent_today + rate + offer.price_per_hour > policy.max_spend_per_day:
            continue
        if any(r.machine_id == offer.machine_id for r in rents):
            continue
        rents.append(Rent(offer_id=offer.offer_id, machine_id=offer.machine_id,
                          price_per_hour=offer.price_per_hour))
        rate += offer.price_per_hour
    return rents


def _drain_idle(snap: Snapshot, policy: Policy, live: list[Instance],
                surplus: int) -> list[Drain]:
    """Drain up to ``surplus`` machines idle past the timeout, longest idle first; never a
    busy or booting one."""
    idle = [i for i in live if i.state == "idle" and i.job_id is None
            and i.idle_since is not None and snap.now - i.idle_since >= policy.idle_timeout_s]
    idle.sort(key=lambda i: (i.idle_since or 0.0, i.instance_id))
    return [Drain(instance_id=i.instance_id) for i in idle[:surplus]]
