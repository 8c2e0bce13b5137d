"""How many machines the fleet should have: the policy's sizing, pure functions of a ``Snapshot``.

Two objectives (controller/policy.py ``Policy``):

- **drain** (``target_wait_s`` 0): enough machines that the estimated backlog drains within
  ``target_drain_s``. It waits for a backlog before it rents more than one machine, so the
  typical job waits a boot and more.
- **wait** (``target_wait_s`` > 0): enough machines that every queued job is expected to start
  within ``target_wait_s``. Each live machine is counted at the moment it is expected to be
  free (idle: now; busy: half a job from now; booting: its expected boot, or two boots from
  now once overdue, since an overdue host is likely a slow image pull); the queue goes first
  come first served to whichever is free first, each taking the mean job time. The jobs no
  live machine can start in time get new machines, which are free a boot from now. When
  ``target_wait_s`` is shorter than a boot, nothing rented now can meet it: a queued job is
  aimed at a boot, and the warm floor keeps machines up for the jobs still to come (below).

Both add the warm floor: ``min_warm``, and ``warm_per_load`` machines per machine of
measured load (the arrival rate times the mean job time: Little's law), rounded down. When a
rent, hedged as configured, mostly comes up after ``target_wait_s`` (the share of the fleet's
recent boots longer than it, to the power 1 + hedge, above ``_LATE``), the floor is at least
the load in machines (jobs over slots) plus its square root, rounded up
(``warm_below_boot``): only a machine already up starts a job that soon. The trigger is a
share of the measured boots, not their median against the target: the median wandered across
a target near it (across the default 120 s in the simulator), and a pool switched on and off
with it cost idle GPUs for nothing. The
rate is a median over minutes (controller/estimate.py ``ArrivalRate``), so a batch submission
sizes the fleet through its queue and leaves no warm machines behind it.

The hedge (``hedge``, wait objective only): a machine bills only storage until its agent is up
(Vast.ai bills no GPU while an image loads), so renting ``1 + hedge`` machines for each one a
queue needs costs little, and the first to boot takes the job. A slow host (an image pull of
minutes) then delays nobody. While a burst waits for five or more machines, ``burst_hedge``
more per machine are rented: the k-th job of a burst waits for the k-th fastest boot, which
with one spare each is about the median boot, and more spares make it sooner. Booting
machines beyond what the queue and the hedge need are destroyed, the slowest first; a booted
one is never destroyed for this, only drained when idle.

Getting this wrong costs either way: too few machines and jobs wait; too many and idle GPUs
bill at full price. Every figure is in ``bench/simulate.py``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

from controller.estimate import late_share

if TYPE_CHECKING:
    from controller.policy import Instance, Policy, Snapshot

__all__ = ["Sizing", "size_fleet", "warm_note"]

# Square-root staffing's margin b: in the Halfin-Whitt limit a share 1 / (1 + b Phi(b) /
# phi(b)) of arrivals find every slot busy, 0.22 at b = 1 and 0.05 at 1.75. Replayed
# (bench/below_boot.py), 1.75 bought 2-3 points more jobs started in time than 1 for a
# quarter more cost: the rest of the misses come from the load changing under the estimate.
_SPARE = 1.0
# In the simulator's market the hedged share of late rents stays at or under about 0.45 (the
# 90th percentile over ticks) at the default 120 s target, and is 0.56-0.91 at 60 s: 0.6 keeps
# the pool off at the default (the goals table is unchanged) and on for a target that short.
_LATE = 0.6
# Machines the queue waits for at once from which ``burst_hedge`` adds spares: a burst, whose
# k-th job waits for the k-th fastest of the boots (with one spare each, about the median).
_BURST = 5


class Sizing(NamedTuple):
    rent: int  # machines to rent now, within max_instances
    keep: int  # live machines to keep: idle ones beyond it drain once past the idle timeout
    surplus_booting: tuple[str, ...]  # booting machines nothing needs: destroy them
    short: int  # machines the objective wants beyond max_instances (0: none)


def size_fleet(snap: Snapshot, policy: Policy, live: list[Instance]) -> Sizing:
    """``live``: the machines not draining and not dead."""
    floor = max(policy.min_warm, _warm_floor(snap, policy))
    if policy.target_wait_s > 0:
        keep, rent, surplus = _for_wait(snap, policy, live, floor)
    else:
        keep = _for_drain(snap, policy, live)
        rent, surplus = max(0, keep - len(live)), ()
    staying = len(live) - len(surplus)
    keep, rent = max(keep, floor), max(rent, floor - staying)
    room = max(0, policy.max_instances - staying)
    return Sizing(rent=min(rent, room), keep=min(keep, policy.max_instances),
                  surplus_booting=surplus, short=max(0, rent - room))


def _boot_s(snap: Snapshot, policy: Policy) -> float:
    """How long a machine rented now takes to come up: measured, or the configured prior."""
    return snap.boot_s if snap.boot_s is not None else policy.expected_boot_s


def _jobs(snap: Snapshot) -> int:
    """Jobs waiting or running on a machine that stays (a draining machine finishes its own)."""
    finishing = sum(1 for i in snap.instances if i.state == "draining" and i.job_id)
    return snap.queued_jobs + max(0, snap.running_jobs - finishing)


def _warm_floor(snap: Snapshot, policy: Policy) -> int:
    load = snap.arrivals_per_s * snap.mean_job_s  # jobs running at once, on average
    floor = math.floor(load * policy.warm_per_load) if policy.warm_per_load > 0 else 0
    return max(floor, _below_boot_pool(snap, policy))


def _below_boot_pool(snap: Snapshot, policy: Policy) -> int:
    """Machines kept up because a rent would come up too late for the target (0: none)."""
    load = snap.arrivals_per_s * snap.mean_job_s
    if not policy.warm_below_boot or load <= 0 or _late_rents(snap, policy) <= _LATE:
        return 0
    # Square-root staffing (Halfin and Whitt): the load plus _SPARE times its square root
    # keeps the share of arrivals that find every slot busy about the same at any load,
    # where a fixed margin would be too thin for a busy fleet or too fat for a quiet one.
    machines = load / max(1, policy.slots)
    return math.ceil(machines + _SPARE * math.sqrt(machines))


def _late_rents(snap: Snapshot, policy: Policy) -> float:
    """The share of hedged rents (1 + hedge machines each, the first up counting) that come
    up after ``target_wait_s``; before any boot is measured, 1 or 0 by the expected boot."""
    if policy.target_wait_s <= 0:
        return 0.0
    late = late_share(snap.boots, policy.target_wait_s)
    if late is None:
        return float(policy.target_wait_s < _boot_s(snap, policy))
    return late ** (1 + policy.hedge)


def warm_note(snap: Snapshot, policy: Policy) -> str:
    """What ``vidfleet status`` adds to the objective when the pool below a boot is kept."""
    pool = _below_boot_pool(snap, policy)
    if not pool:
        return ""
    return (f", {pool} machines kept up for it (a rent, hedged, comes up later "
            f"{_late_rents(snap, policy):.0%} of the time)")


def _for_drain(snap: Snapshot, policy: Policy, live: list[Instance]) -> int:
    jobs = _jobs(snap)
    if not jobs:
        return 0
    target_s = policy.target_drain_s
    want = math.ceil(snap.backlog_work_s / target_s)
    if want > len(live):
        # Machines still booting drain less within the target, and new ones less again.
        boot_s = _boot_s(snap, policy)
        have_s = sum(target_s - max(0.0, boot_s - (snap.now - i.launched_at))
                     if i.state == "booting" else target_s for i in live)
        new_s = max(target_s - boot_s, target_s / 4)
        want = len(live) + max(0, math.ceil((snap.backlog_work_s - have_s) / new_s))
    # Never more machines than the jobs fill (``slots`` each), at least one when there is any.
    return min(math.ceil(jobs / max(1, policy.slots)), max(want, 1))


def _ready_in(inst: Instance, snap: Snapshot, policy: Policy) -> float:
    """Seconds until ``inst`` is expected to take a queued job."""
    if inst.state == "idle":
        return 0.0
    if inst.state == "busy":
        return snap.mean_job_s / 2
    boot_s = _boot_s(snap, policy)
    left = boot_s - (snap.now - inst.launched_at)
    return left if left >= 0 else 2 * boot_s


def _for_wait(snap: Snapshot, policy: Policy, live: list[Instance],
              floor: int) -> tuple[int, int, tuple[str, ...]]:
    """(live machines to keep, machines to rent, spare booting machines to destroy); a spare
    booting machine the warm floor still wants is kept."""
    job_s = max(snap.mean_job_s, 1.0)
    boot_s = _boot_s(snap, policy)
    horizon = max(policy.target_wait_s, boot_s)

    def starts(ready_in: float) -> int:  # queued jobs a machine free then starts in time
        return int((horizon - ready_in) // job_s) + 1 if ready_in <= horizon else 0

    slots = max(1, policy.slots)
    lanes = _lanes(live, snap, policy, slots)
    in_hand = sum(1 for _, _, busy in lanes if busy)
    # A job the consumer counts as running with no busy machine behind it (its agent died, or
    # it waits out a retry's backoff) will be delivered again: it needs a machine as a queued
    # job does, or the fleet drains to nothing while it waits and nothing ever runs it.
    unheld = max(0, _jobs(snap) - snap.queued_jobs - in_hand)
    queue = snap.queued_jobs + unheld
    used: set[str] = set()  # machines the queue (or a job in hand) needs
    for ready, inst, busy in lanes:
        if busy or (queue > 0 and ready <= boot_s):  # sooner than a rent
            used.add(inst.instance_id)
            queue -= starts(ready)
    booting_used = sum(1 for i in live if i.state == "booting" and i.instance_id in used)
    # Idle machines the queue does not need (the warm floor may want them), and booting ones,
    # soonest first (the lanes' order).
    idle_unused = sum(1 for i in live if i.state == "idle" and i.instance_id not in used)
    spare = list({i.instance_id: i for _, i, _ in lanes
                  if i.state == "booting" and i.instance_id not in used}.values())
    new = math.ceil(max(0, queue) / (starts(boot_s) * slots))
    # The hedge: 1 + hedge booting machines for each one the queue waits for.
    waiting_on = booting_used + new  # machines the queue waits for to boot
    hedge = policy.hedge + (policy.burst_hedge if waiting_on >= _BURST else 0.0)
    spare_wanted = math.ceil(waiting_on * (1 + hedge)) - waiting_on
    for_floor = floor - len(used) - new - idle_unused
    kept = spare[:max(spare_wanted, for_floor)]
    surplus = tuple(i.instance_id for i in spare[len(kept):] if not _unheard(i, snap, policy))
    rent = new + max(0, spare_wanted - len(spare))
    keep = len(used) + len(kept)
    return keep, rent, surplus


def _lanes(live: list[Instance], snap: Snapshot, policy: Policy,
           slots: int) -> list[tuple[float, Instance, bool]]:
    """Each machine's slots as (seconds until it takes a queued job, machine, busy now),
    soonest first: a busy machine's jobs in hand free up half a job from now, and its other
    slots take a job at once."""
    lanes = []
    for inst in live:
        ready = _ready_in(inst, snap, policy)
        # As many as its agent chose (it measures what its GPU bears), within the setting.
        own = max(1, min(slots, inst.slots or slots))
        busy = min(own, max(1, inst.jobs)) if inst.state == "busy" else 0
        free_at = 0.0 if inst.state == "busy" else ready
        lanes += [(ready, inst, True)] * busy + [(free_at, inst, False)] * (own - busy)
    return sorted(lanes, key=lambda lane: (lane[0], lane[1].instance_id))


def _unheard(inst: Instance, snap: Snapshot, policy: Policy) -> bool:
    """A "booting" machine rented before this controller began listening, which it has not
    had a heartbeat's time to hear: after a restart its agent may well be up and idle (the
    record is written before the first heartbeat), and destroying it wastes a whole boot."""
    return (inst.launched_at < snap.heard_since
            and snap.now - snap.heard_since < policy.heartbeat_timeout_s)
