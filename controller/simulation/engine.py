"""The virtual-clock run: the real ``decide()`` every ``tick_s`` over a trace and a provider model.

Agents act between ticks, as they do for real: a machine pulls a job the moment it boots or
finishes one, one job at a time. The controller acts only on ticks: it observes a ``Snapshot``,
calls ``decide``, and applies Rent/Drain/Destroy to the model. A tick whose instance list fails
does nothing (an outage is an alarm, never "zero instances"). No wall clock anywhere.

Two figures for money, on purpose. The *bill* is what Vast.ai charges: a machine's storage
only, from rent until its agent is up (image pull and container start bill no GPU), then its
full price (GPU plus storage) until it is destroyed; one that never comes up bills storage
until it is destroyed. The *meter* is what the controller counts and the policy sees: the full
price from the moment of the rent, booting included. It errs high on purpose, so the caps
(``max_price_per_hour``, ``max_spend_per_day``) are replayed as the controller applies them.
"""

from __future__ import annotations

import heapq
from collections import deque

from msgspec import Struct

from controller.estimate import ArrivalRate, BootTimes, JobTimes
from controller.policy import Destroy, Drain, Policy, Rent, Snapshot, Unmet, decide
from controller.simulation.fleet import JobState, Machine, build_snapshot, fleet_costs
from controller.simulation.provider import Fates, Market

__all__ = ["Outcome", "TickRecord", "simulate_policy"]

_DAY_S = 86_400.0


class TickRecord(Struct, frozen=True, kw_only=True):
    now: float
    acted: bool  # False: the instance list failed, the tick did nothing
    rate_per_hour: float  # the fleet's burn rate after the tick's actions, as metered
    spent_today: float  # metered dollars since the (virtual) UTC midnight
    instances: int


class Outcome(Struct, frozen=True, kw_only=True):
    waits_s: tuple[float, ...]  # per started job: arrival to first start
    cost: float  # dollars billed: boot_cost + idle_cost + busy_cost
    boot_cost: float  # storage from rent until the agent is up (or destroyed, never up)
    idle_cost: float  # full price while up and running no job: idle, draining, agent dead
    busy_cost: float  # full price while running jobs, lost work included
    metered_cost: float  # full price from rent to destroy: the controller's meter
    busy_s: float  # machine-seconds spent running jobs (lost work included)
    work_done_s: float  # encoder seconds at speed 1.0 in those (lost work included)
    billed_s: float  # machine-seconds from rent to destroy: storage bills all of them
    booting_s: float  # of those, before a first heartbeat (or never): no GPU billed
    machines: int  # launched
    rent_failures: int
    jobs_killed: int  # destroyed under a live agent mid-job (decide must never do this)
    ticks: tuple[TickRecord, ...]
    max_day_spend: float
    drained_at: float  # when the last job finished (or the end, when some never did)
    fleet_empty_at: float | None  # None: machines were still up when the run ended
    unfinished_jobs: int
    unmet_ticks: int = 0  # ticks on which the objective needed machines it could not rent


class _Run:
    def __init__(self, jobs: list[JobState], policy: Policy, market: Market, fates: Fates,
                 redelivery_s: float, slot_gain: float) -> None:
        self.jobs, self.policy, self.market, self.fates = jobs, policy, market, fates
        self.slots, self.slot_gain = max(1, policy.slots), slot_gain
        self.redelivery_s = redelivery_s
        self.events: list[tuple[float, int, str, int, int, int]] = []
        self.seq = 0
        self.queue: deque[int] = deque()
        self.times = JobTimes()  # what the controller learns from finished jobs
        self.arrivals = ArrivalRate()
        self.boots = BootTimes()  # what the controller measures of its machines' boots
        self.arrived = 0  # jobs submitted so far: the JOBS stream's last sequence
        self.unmet_ticks = 0
        self.in_flight: dict[int, tuple[Machine, float] | None] = {}  # (machine, started)
        self.machines: list[Machine] = []
        self.live: list[Machine] = []
        self.failed: frozenset[int] = frozenset()
        self.last_rent_at: float | None = None
        self.rent_attempts = self.rent_failures = self.jobs_killed = 0
        self.speed_sums: dict[str, tuple[float, int]] = {}
        self.busy_s = self.spent_today = self.max_day_spend = 0.0
        self.done = 0
        for index, job in enumerate(jobs):
            self.push(job.arrival_s, "arrive", index)

    def push(self, at: float, kind: str, a: int, b: int = 0, c: int = 0) -> None:
        heapq.heappush(self.events, (at, self.seq, kind, a, b, c))
        self.seq += 1

    # --- what agents and the bus do between ticks
    def run_events(self, until: float) -> None:
        while self.events and self.events[0][0] <= until:
            at, _, kind, a, b, c = heapq.heappop(self.events)
            self.arrived += kind == "arrive"
            if kind in ("arrive", "redeliver"):
                self.in_flight.pop(a, None)
                self.enqueue(a, front=kind == "redeliver")
            elif kind == "boot" and self.machines[a].destroyed_at is None:
                m = self.machines[a]
                m.booted_at = m.idle_since = m.free_since = at
                self.boots.add(at - self.machines[a].launched_at)
            elif kind == "done" and self.machines[a].token == b:
                self.end_job(self.machines[a], c, at)
            elif kind == "die" and self.machines[a].life == b:
                self.agent_died(self.machines[a], at)
            self.dispatch(at)

    def enqueue(self, index: int, *, front: bool) -> None:
        (self.queue.appendleft if front else self.queue.append)(index)

    def dispatch(self, now: float) -> None:
        while self.queue:
            free = [m for m in self.live if m.free()]
            if not free:
                return
            # The slot that has waited longest takes it, as the dispatcher's waiters do.
            machine = min(free, key=lambda m: (m.free_since, m.launch))
            index = self.queue.popleft()
            self.start_job(machine, index, now)

    def start_job(self, m: Machine, index: int, now: float) -> None:
        job = self.jobs[index]
        if job.started_at is None:
            job.started_at = now
        self.busy_s += m.advance(now)
        m.work_left[index], m.job_started[index], m.idle_since = job.work_s, now, None
        self.in_flight[index] = (m, now)
        # Deaths come at agent_death_per_hour per busy machine-hour: each job draws its share
        # (1/slots of the rate over its time alone), so a full machine dies at the full rate.
        alone_s = job.work_s / m.speed
        death_s = self.fates.dies_after_s(m.launch, m.jobs_started, alone_s / m.slots)
        m.jobs_started += 1
        if death_s is not None:
            self.push(now + death_s * m.slots, "die", m.launch, m.life)
        self.reschedule(m, now)

    def reschedule(self, m: Machine, now: float) -> None:
        """Its jobs' pace changed (one started or ended): their finishes move."""
        m.token += 1
        pace = m.pace()
        for index, left in m.work_left.items():
            self.push(now + max(0.0, left) / pace, "done", m.launch, m.token, index)

    def end_job(self, m: Machine, index: int, now: float) -> None:
        """Job ``index`` on ``m`` finished."""
        self.busy_s += m.advance(now)
        if len(m.work_left) >= m.slots:  # its first free slot (another may have waited longer)
            m.free_since = now
        del m.work_left[index]
        started = m.job_started.pop(index)
        job = self.jobs[index]
        job.done_at = now
        if not m.work_left:
            m.idle_since = now
        self.times.learn(job.operation, now - started)
        del self.in_flight[index]
        self.done += 1
        total, count = self.speed_sums.get(m.gpu_name, (0.0, 0))
        self.speed_sums[m.gpu_name] = (total + m.speed, count + 1)
        self.reschedule(m, now)

    def agent_died(self, m: Machine, now: float) -> None:
        """Its agent died (or the machine was destroyed) under its jobs: each comes back
        once the consumer's ack wait runs out; the fleet KV still shows them."""
        self.busy_s += m.advance(now)
        m.dead_at = m.dead_at if m.dead_at is not None else now
        m.life += 1
        m.token += 1
        for index in m.work_left:
            self.in_flight[index] = None  # held by the consumer until ack_wait runs out
            self.push(now + self.redelivery_s, "redeliver", index)

    # --- what the controller does on a tick
    def tick(self, number: int, now: float) -> TickRecord:
        acted = not self.fates.list_fails(number)
        self.arrivals.observe(now, self.arrived)
        if acted:
            actions = decide(self.snapshot(now), self.policy)
            self.unmet_ticks += any(isinstance(a, Unmet) for a in actions)
            for action in actions:
                if isinstance(action, Rent):
                    self.rent(action, now)
                elif isinstance(action, Drain):
                    self.machine(action.instance_id).draining = True
                elif isinstance(action, Destroy):
                    self.destroy(action, now)
            self.dispatch(now)
        return TickRecord(now=now, acted=acted, rate_per_hour=self.rate(),
                          spent_today=self.spent_today, instances=len(self.live))

    def snapshot(self, now: float) -> Snapshot:
        gpu_speed = {name: total / count for name, (total, count) in self.speed_sums.items()}
        return build_snapshot(
            now=now, queued=len(self.queue), mean_job_s=self.times.mean(),
            running=list(self.in_flight.values()),
            machines=self.live, offers=self.market.listed(now), spent_today=self.spent_today,
            failed_machines=self.failed, last_rent_at=self.last_rent_at, gpu_speed=gpu_speed,
            arrivals_per_s=self.arrivals.per_s(), boot_s=self.boots.expected(),
            boots=self.boots.seen())

    def machine(self, instance_id: str) -> Machine:
        return self.machines[int(instance_id[1:])]

    def rent(self, action: Rent, now: float) -> None:
        self.last_rent_at = now
        attempt, self.rent_attempts = self.rent_attempts, self.rent_attempts + 1
        if self.fates.rent_fails(attempt):
            self.market.steal(action.offer_id, now)
            self.rent_failures += 1
            return
        got = self.market.take(action.offer_id)
        if got is None:
            self.rent_failures += 1
            return
        m = Machine(launch=len(self.machines), machine_id=got.offer.machine_id,
                    gpu_name=got.offer.gpu_name, price_per_hour=got.offer.price_per_hour,
                    storage_per_hour=got.storage_per_hour, speed=got.speed, launched_at=now,
                    slots=self.slots, slot_gain=self.slot_gain, shared_since=now)
        self.machines.append(m)
        self.live.append(m)
        boot_s = self.fates.boot_after_s(m.launch, got.offer.inet_down_mbps)
        if boot_s is not None:
            self.push(now + boot_s, "boot", m.launch)

    def destroy(self, action: Destroy, now: float) -> None:
        m = self.machine(action.instance_id)
        if m.destroyed_at is not None:
            return
        if m.work_left and m.dead_at is None:
            self.jobs_killed += len(m.work_left)
            self.agent_died(m, now)  # killed mid-job: its jobs come back
        m.destroyed_at = now
        if m.booted_at is None:
            self.boots.censored(now - m.launched_at)
        self.live.remove(m)
        self.market.give_back(m.machine_id)
        if action.avoid_machine is not None:
            self.failed = self.failed | {action.avoid_machine}

    def rate(self) -> float:
        return sum(m.price_per_hour for m in self.live)

    def bill(self, start: float, end: float) -> None:
        """Meter the fleet's spend over [start, end] at its full price, as the controller
        does; the fleet only changes on ticks."""
        rate = self.rate()
        while start < end:
            midnight = (start // _DAY_S + 1) * _DAY_S
            step_end = min(end, midnight)
            self.spent_today += rate * (step_end - start) / 3600
            self.max_day_spend = max(self.max_day_spend, self.spent_today)
            if step_end == midnight:
                self.spent_today = 0.0
            start = step_end

    def finished(self) -> bool:
        return self.done == len(self.jobs)


def simulate_policy(jobs: list[JobState], *, policy: Policy, market: Market, fates: Fates,
                    tick_s: float = 5.0, redelivery_s: float = 30.0,
                    horizon_s: float = 2 * _DAY_S, slot_gain: float = 1.0) -> Outcome:
    """Replay ``jobs`` (in arrival order) through ``decide()`` until every job is done and the
    fleet is empty (or, with a warm floor, every job is done), or ``horizon_s`` after the last
    arrival. ``jobs`` are updated in place with their start and finish times. Each machine
    runs ``policy.slots`` jobs at once, as the controller tells its agents, sharing
    ``slot_gain`` times one job's throughput (``Machine.pace``)."""
    run = _Run(jobs, policy, market, fates, redelivery_s, slot_gain)
    last_arrival = jobs[-1].arrival_s if jobs else 0.0
    ticks: list[TickRecord] = []
    now, number, drained_at = 0.0, 0, None
    while True:
        run.run_events(now)
        if drained_at is None and run.finished():
            drained_at = max((j.done_at or 0.0 for j in jobs), default=0.0)
        ticks.append(run.tick(number, now))
        if run.finished() and (not run.live or policy.min_warm > 0):
            break
        if now > last_arrival + horizon_s:
            break
        run.bill(now, now + tick_s)
        now, number = now + tick_s, number + 1
    c = fleet_costs(run.machines, end=now)
    return Outcome(
        waits_s=tuple(j.started_at - j.arrival_s for j in jobs if j.started_at is not None),
        cost=c.boot + c.idle + c.busy, boot_cost=c.boot, idle_cost=c.idle, busy_cost=c.busy,
        metered_cost=c.metered, busy_s=run.busy_s, work_done_s=c.work_done_s,
        billed_s=c.billed_s, booting_s=c.booting_s, machines=len(run.machines),
        rent_failures=run.rent_failures, jobs_killed=run.jobs_killed, ticks=tuple(ticks),
        max_day_spend=run.max_day_spend,
        drained_at=drained_at if drained_at is not None else now,
        fleet_empty_at=None if run.live else now,
        unfinished_jobs=len(jobs) - run.done, unmet_ticks=run.unmet_ticks)
