"""The scaling policy: a pure ``decide(snapshot, policy) -> actions``.

No clock, network or logger here: the loop around it observes (backlog from the JOBS consumer's
leader, heartbeats, the provider's instance list, spend) into a ``Snapshot``, calls
``decide``, and carries out the actions. Getting this wrong costs money both ways: renting
too eagerly (or twice for the same need, while a machine is still booting) bills idle GPUs;
destroying a busy machine kills a job mid-encode, so scale-down only ever drains idle ones
(only a day budget nearly spent drains busy ones, and they finish their job first; once it is
spent, whatever still runs is destroyed: a machine claiming to be busy cannot bill forever).
"""

from __future__ import annotations

import math
import re
from typing import Literal

from msgspec import Struct, field

__all__ = [
    "NO_NVENC_GPUS",
    "Destroy",
    "Drain",
    "Instance",
    "Offer",
    "Policy",
    "Rent",
    "Snapshot",
    "decide",
    "has_nvenc",
    "rank_offers",
]

# Data-centre GPUs without an NVENC block (ffmpeg.md 5.3): renting one buys no encoder.
NO_NVENC_GPUS = frozenset({"A100", "A30", "A800", "H100", "H800", "H200", "GH200", "B200",
                           "GB200"})
# Relative NVENC throughput by GPU generation, the prior before measured speeds exist.
_SPEED_PRIOR = {"RTX 40": 1.0, "RTX 50": 1.1, "L4": 0.9, "L40": 1.0, "RTX 30": 0.8,
                "A10": 0.8, "A40": 0.8, "RTX A": 0.8, "T4": 0.5, "RTX 20": 0.6}


class Offer(Struct, frozen=True, kw_only=True):
    offer_id: int
    machine_id: int
    gpu_name: str
    gpu_ram_mb: int
    price_per_hour: float  # dph_total: GPU plus the storage asked for
    reliability: float
    inet_down_mbps: float
    cuda_max_good: float


class Instance(Struct, frozen=True, kw_only=True):
    instance_id: str
    machine_id: int
    price_per_hour: float
    state: Literal["booting", "idle", "busy", "draining"]
    launched_at: float
    last_heartbeat_at: float | None = None  # None: never heartbeated (still booting)
    idle_since: float | None = None
    job_id: str | None = None


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


class Policy(Struct, frozen=True, kw_only=True):
    min_warm: int = 0
    max_instances: int = 4
    target_drain_s: float = 600.0  # rent enough that the backlog drains within this
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


Action = Rent | Drain | Destroy


def _speed_prior(gpu_name: str) -> float:
    for prefix, speed in _SPEED_PRIOR.items():
        if prefix in gpu_name:
            return speed
    return 0.5


def _speeds(gpu_speed: dict[str, float]) -> dict[str, float]:
    """Measured speeds put on the priors' scale: each model keeps its measured ratio to the
    others, and the geometric mean of measured/prior is 1, so an unmeasured model still
    compares fairly whatever unit the measurements came in."""
    measured = {name: v for name, v in gpu_speed.items() if v > 0 and math.isfinite(v)}
    if not measured:
        return {}
    logs = [math.log(_speed_prior(name) / v) for name, v in measured.items()]
    scale = math.exp(sum(logs) / len(logs))
    return {name: v * scale for name, v in measured.items()}


def has_nvenc(gpu_name: str) -> bool:
    """False for the data-centre models without NVENC, matched as whole words of the name
    ("A100 SXM4", "H100_NVL", "A100X"): a substring test would also drop the RTX A1000 and
    A3000, which have NVENC."""
    words = re.split(r"[^A-Z0-9]+", gpu_name.upper())
    return not any(w in NO_NVENC_GPUS or (w.endswith("X") and w[:-1] in NO_NVENC_GPUS)
                   for w in words)


def rank_offers(offers: tuple[Offer, ...], policy: Policy,
                avoid: frozenset[int] = frozenset(),
                gpu_speed: dict[str, float] | None = None) -> list[Offer]:
    """Acceptable offers, cheapest per encoded second first: by the GPU model's measured
    speed when ``gpu_speed`` has one (see ``Snapshot.gpu_speed``), else by its prior."""
    measured = _speeds(gpu_speed or {})
    ok = [o for o in offers
          if has_nvenc(o.gpu_name)
          and o.machine_id not in avoid
          and o.gpu_ram_mb >= policy.min_gpu_ram_mb
          and o.reliability >= policy.min_reliability
          and o.inet_down_mbps >= policy.min_inet_down_mbps
          and o.cuda_max_good >= policy.min_cuda
          and o.price_per_hour <= policy.max_offer_price_per_hour]
    return sorted(ok, key=lambda o: (o.price_per_hour
                                     / (measured.get(o.gpu_name) or _speed_prior(o.gpu_name)),
                                     -o.reliability, o.offer_id))


def _desired(snap: Snapshot, policy: Policy, live: list[Instance]) -> int:
    # A job finishing on a draining machine needs no new one.
    finishing = sum(1 for i in snap.instances if i.state == "draining" and i.job_id)
    jobs = snap.queued_jobs + max(0, snap.running_jobs - finishing)
    want = 0
    if jobs:
        target_s = policy.target_drain_s
        want = math.ceil(snap.backlog_work_s / target_s)
        if want > len(live):
            # Machines still booting drain less within the target, and new ones less again.
            have_s = sum(target_s - max(0.0, policy.expected_boot_s - (snap.now - i.launched_at))
                         if i.state == "booting" else target_s for i in live)
            new_s = max(target_s - policy.expected_boot_s, target_s / 4)
            want = len(live) + max(0, math.ceil((snap.backlog_work_s - have_s) / new_s))
        # Never more machines than jobs (one job each), at least one when there is any work.
        want = min(jobs, max(want, 1))
    return min(policy.max_instances, max(policy.min_warm, want))


def _dead(inst: Instance, snap: Snapshot, policy: Policy) -> str | None:
    if inst.last_heartbeat_at is None:
        if snap.now - inst.launched_at > policy.boot_deadline_s:
            return f"no heartbeat within the boot deadline ({policy.boot_deadline_s:.0f}s)"
        return None
    if snap.now - inst.last_heartbeat_at > policy.heartbeat_timeout_s:
        return f"silent for over {policy.heartbeat_timeout_s:.0f}s"
    return None


def decide(snap: Snapshot, policy: Policy) -> list[Action]:
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
    rate = sum(i.price_per_hour for i in snap.instances)
    if snap.spent_today >= policy.max_spend_per_day:
        return actions + _destroy_all(live + finishing)
    if snap.spent_today + rate * policy.budget_reserve_s / 3600 >= policy.max_spend_per_day:
        return actions + _stop_all(live)
    desired = _desired(snap, policy, live)
    if desired > len(live):
        actions += _rent(snap, policy, live, desired - len(live))
    elif desired < len(live):
        actions += _drain_idle(snap, policy, live, len(live) - desired)
    return actions


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


def _rent(snap: Snapshot, policy: Policy, live: list[Instance], count: int) -> list[Rent]:
    if snap.last_rent_at is not None and snap.now - snap.last_rent_at < policy.rent_cooldown_s:
        return []
    rate = sum(i.price_per_hour for i in snap.instances)
    rents: list[Rent] = []
    for offer in rank_offers(snap.offers, policy, snap.failed_machines, snap.gpu_speed):
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
