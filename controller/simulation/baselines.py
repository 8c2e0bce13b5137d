"""What ours is compared with, on the same trace, market and luck.

- **one GPU per request** (the old design): each job rents its own machine when it arrives
  (the cheapest acceptable offer then listed), waits for the boot, runs, and destroys it.
  Billed like ours: storage only until the agent is up, the full price from then until the
  destroy (so each job's boot costs storage, not GPU). A rent that loses its offer tries the
  next one; a machine with no heartbeat by the boot deadline is destroyed (storage billed that
  long) and another rented; an agent that dies mid-job is noticed after the heartbeat timeout
  and the job rents again. No fleet caps: the old design had none. With no offer listed, the
  job waits for one.
- **fixed pool**: N machines (the N best offers), booted before the trace and never stopped,
  billed their full price from 0 to the later of the last arrival and the last finish; jobs go
  first come first served to the first free machine. No boots and no faults at all, which
  flatters it.
- **lower bound** (clairvoyant, not a schedule): every encoder second bought at the cheapest
  acceptable price per encoded second, with no boot, no idle and no wait. No policy can pay
  less for the same work on this market.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import NamedTuple

from controller.policy import Policy, rank_offers
from controller.simulation.fleet import JobState
from controller.simulation.provider import Fates, Market, MarketOffer
from controller.simulation.report import PolicyResult, result

__all__ = ["cheapest_per_work_s", "fixed_pool", "lower_bound", "one_per_request"]

_RETRY_S = 2.0  # the old orchestrator's pause before trying the next offer


class _Life(NamedTuple):
    loading_s: float  # rent to the agent's first heartbeat (or to destroy: never up)
    up_s: float  # from then to destroy
    started_at: float | None  # the job started on this machine
    retry_at: float | None  # the job must rent again then (None: it is done)
    busy_s: float
    avoid: bool  # the machine never booted


def one_per_request(jobs: list[JobState], *, policy: Policy, market: Market,
                    fates: Fates) -> PolicyResult:
    events: list[tuple[float, int, str, int]] = []  # (at, seq, kind, job index or machine)
    attempts, launches, avoid = 0, 0, frozenset[int]()
    waiting: deque[int] = deque()  # jobs that found no offer listed, first come first
    starts: dict[int, float] = {}
    cost = busy_s = billed_s = 0.0

    order = itertools.count()

    def push(at: float, kind: str, ref: int) -> None:
        heapq.heappush(events, (at, next(order), kind, ref))

    for index, job in enumerate(jobs):
        push(job.arrival_s, "try", index)
    while events:
        now, _, kind, ref = heapq.heappop(events)
        if kind == "release":
            market.give_back(ref)  # one offer back: the longest waiting job tries it
            if waiting:
                push(now, "retry", waiting.popleft())
            continue
        ranked = rank_offers(market.listed(now), policy, avoid)
        if not ranked:
            (waiting.appendleft if kind == "retry" else waiting.append)(ref)
            continue
        attempt, attempts = attempts, attempts + 1
        if fates.rent_fails(attempt):
            market.steal(ranked[0].offer_id, now)
            push(now + _RETRY_S, "try", ref)
            continue
        got = market.take(ranked[0].offer_id)
        assert got is not None
        life = _lifetime(jobs[ref], got, fates, launches, policy, now)
        launches += 1
        if life.started_at is not None:
            starts.setdefault(ref, life.started_at)
        if life.retry_at is not None:
            push(life.retry_at, "try", ref)
        if life.avoid:
            avoid = avoid | {got.offer.machine_id}
        cost += (life.loading_s * got.storage_per_hour
                 + life.up_s * got.offer.price_per_hour) / 3600
        held_s = life.loading_s + life.up_s
        busy_s, billed_s = busy_s + life.busy_s, billed_s + held_s
        push(now + held_s, "release", got.offer.machine_id)
    waits = [starts[i] - job.arrival_s for i, job in enumerate(jobs) if i in starts]
    return result("one GPU per request", waits_s=waits, cost=cost, busy_s=busy_s,
                  billed_s=billed_s, machines=launches)


def _lifetime(job: JobState, got: MarketOffer, fates: Fates, launch: int, policy: Policy,
              now: float) -> _Life:
    boot_s = fates.boot_after_s(launch, got.offer.inet_down_mbps)
    if boot_s is None or boot_s > policy.boot_deadline_s:
        deadline_s = policy.boot_deadline_s
        return _Life(deadline_s, 0.0, None, now + deadline_s, 0.0, avoid=True)
    duration_s = job.work_s / got.speed
    death_s = fates.dies_after_s(launch, 0, duration_s)
    if death_s is None:
        return _Life(boot_s, duration_s, now + boot_s, None, duration_s, avoid=False)
    up_s = death_s + policy.heartbeat_timeout_s
    return _Life(boot_s, up_s, now + boot_s, now + boot_s + up_s, death_s, avoid=False)


def _best(market: Market, policy: Policy, count: int) -> list[MarketOffer]:
    ranked = rank_offers(market.listed(0.0), policy)[:count]
    return [m for m in (market.take(o.offer_id) for o in ranked) if m is not None]


def fixed_pool(jobs: list[JobState], *, size: int, policy: Policy,
               market: Market) -> PolicyResult:
    pool = _best(market, policy, size)
    free_at = [(0.0, n) for n in range(len(pool))]  # (free at, machine), a heap
    waits, busy_s, end = [], 0.0, max((j.arrival_s for j in jobs), default=0.0)
    for job in jobs:
        free, n = heapq.heappop(free_at)
        start = max(free, job.arrival_s)
        duration_s = job.work_s / pool[n].speed
        waits.append(start - job.arrival_s)
        busy_s += duration_s
        end = max(end, start + duration_s)
        heapq.heappush(free_at, (start + duration_s, n))
    rate = sum(m.offer.price_per_hour for m in pool)
    return result(f"fixed pool of {len(pool)}", waits_s=waits, cost=rate * end / 3600,
                  busy_s=busy_s, billed_s=len(pool) * end, machines=len(pool))


def cheapest_per_work_s(policy: Policy, offers: tuple[MarketOffer, ...]) -> float | None:
    """Dollars per encoder second (at speed 1.0) on the acceptable offer that is cheapest for
    its true speed, at its full price; None when no offer is acceptable."""
    speeds = {m.offer.offer_id: m.speed for m in offers}
    acceptable = rank_offers(tuple(m.offer for m in offers), policy)
    if not acceptable:
        return None
    return min(o.price_per_hour / speeds[o.offer_id] for o in acceptable) / 3600


def lower_bound(jobs: list[JobState], *, policy: Policy,
                offers: tuple[MarketOffer, ...], slot_gain: float = 1.0) -> PolicyResult:
    """Every job's work on the cheapest acceptable offer per encoded second, with nothing
    idle; ``slot_gain``: every machine always full, its slots together that much faster."""
    per_work_s = cheapest_per_work_s(policy, offers)
    if per_work_s is None:
        return result("lower bound", waits_s=[], cost=0.0, busy_s=0.0, billed_s=0.0,
                      machines=0, note="no acceptable offer")
    work_s = sum(j.work_s for j in jobs)
    return result("lower bound", waits_s=[0.0] * len(jobs), cost=work_s * per_work_s / slot_gain,
                  busy_s=1.0, billed_s=1.0, machines=0, note="clairvoyant bound, not a schedule")
