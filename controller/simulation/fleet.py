"""The simulated fleet's machines and jobs, and the ``Snapshot`` the real loop would observe.

The snapshot is built the way the loop builds it: queued and running counts as the JOBS
consumer reports them (a job whose agent died stays "running" until its redelivery), backlog in
estimated encoder seconds, instances as the fleet KV and heartbeats show them (a machine whose
agent died keeps its last state and stops heartbeating), the market's listed offers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from controller.estimate import backlog_work_s
from controller.policy import Instance, Offer, Snapshot

__all__ = ["Costs", "JobState", "Machine", "build_snapshot", "fleet_costs"]


@dataclass
class Machine:
    launch: int  # 0-based launch index in the run; the instance id is f"i{launch}"
    machine_id: int
    gpu_name: str
    price_per_hour: float  # GPU plus storage, billed once the agent is up
    storage_per_hour: float  # the disk alone, billed while the image loads
    speed: float
    launched_at: float
    booted_at: float | None = None  # its agent's first heartbeat
    dead_at: float | None = None  # its agent died: no more heartbeats
    draining: bool = False
    slots: int = 1  # jobs its agent runs at once
    slot_gain: float = 1.0  # its throughput with every slot busy, against one job alone
    work_left: dict[int, float] = field(default_factory=dict)  # job index -> work still to do
    job_started: dict[int, float] = field(default_factory=dict)  # job index -> its start here
    shared_since: float = 0.0  # work_left is as of this moment
    token: int = 0  # bumps whenever its jobs' pace changes; stale done events carry an old one
    life: int = 0  # bumps when its agent dies or it is destroyed; stale deaths carry an old one
    jobs_started: int = 0
    busy_s: float = 0.0  # running jobs (any), lost work included
    work_done_s: float = 0.0  # encoder seconds at speed 1.0 done in those, lost work included
    idle_since: float | None = None  # every slot free since
    free_since: float = 0.0  # a slot free since (while one is)
    destroyed_at: float | None = None

    @property
    def instance_id(self) -> str:
        return f"i{self.launch}"

    def phases_s(self, end: float) -> tuple[float, float]:
        """(loading, up) seconds: rent to the agent's first heartbeat (or to destroy, for one
        that never came), then to destroy; ``end`` stands in for a destroy yet to come."""
        gone = self.destroyed_at if self.destroyed_at is not None else end
        up_from = self.booted_at if self.booted_at is not None else gone
        return up_from - self.launched_at, gone - up_from

    def free(self) -> bool:
        """Its agent would pull a job now: a slot is free."""
        return (self.booted_at is not None and self.dead_at is None and not self.draining
                and len(self.work_left) < self.slots and self.destroyed_at is None)

    def pace(self) -> float:
        """Work each of its jobs gets done per second: processor sharing. With k of its
        slots busy, the machine runs at 1 + (slot_gain - 1)(k - 1)/(slots - 1) times its
        speed, split evenly; one job alone runs at its speed."""
        k = len(self.work_left)
        if k <= 1 or self.slots <= 1:
            return self.speed
        return self.speed * (1 + (self.slot_gain - 1) * (k - 1) / (self.slots - 1)) / k

    def advance(self, now: float) -> float:
        """Bring its jobs' work left up to ``now``; returns the busy seconds since the last
        change (the machine is busy while any job runs)."""
        elapsed = now - self.shared_since
        self.shared_since = now
        if not self.work_left or self.dead_at is not None:  # (a dead agent's jobs stand still)
            return 0.0
        done = elapsed * self.pace()
        self.work_left = {j: left - done for j, left in self.work_left.items()}
        self.work_done_s += done * len(self.work_left)
        self.busy_s += elapsed
        return elapsed

    def as_instance(self, now: float) -> Instance:
        if self.booted_at is None:
            state, beat = "booting", None
        else:
            beat = self.dead_at if self.dead_at is not None else now
            state = ("draining" if self.draining
                     else "busy" if self.work_left else "idle")
        return Instance(instance_id=self.instance_id, machine_id=self.machine_id,
                        price_per_hour=self.price_per_hour,
                        state=state,  # type: ignore[arg-type]
                        launched_at=self.launched_at, last_heartbeat_at=beat,
                        idle_since=None if self.work_left else self.idle_since,
                        job_id=f"j{min(self.work_left)}" if self.work_left else None,
                        jobs=len(self.work_left),
                        slots=self.slots)


@dataclass
class JobState:
    work_s: float  # encoder seconds at speed 1.0: the truth, which the policy never sees
    arrival_s: float
    started_at: float | None = None  # the first start: what the client's wait ends on
    done_at: float | None = None
    operation: str = "job"  # the controller's estimate learns per operation


def build_snapshot(*, now: float, queued: int, mean_job_s: float,
                   running: list[tuple[Machine, float] | None],
                   machines: list[Machine], offers: tuple[Offer, ...], spent_today: float,
                   failed_machines: frozenset[int], last_rent_at: float | None,
                   gpu_speed: dict[str, float], arrivals_per_s: float = 0.0,
                   boot_s: float | None = None,
                   boots: tuple[tuple[float, bool], ...] = ()) -> Snapshot:
    """``running``: the machine running each job in flight and the job's start there (None
    once its agent died: the consumer still holds the job until the redelivery). The
    backlog's work is the live controller's estimate (controller/estimate.py) from
    ``mean_job_s``, the finished jobs' mean machine time, and the running jobs' ages; never a
    job's true work, which no deployment knows before it has run."""
    alive = [r for r in running if r is not None and r[0].dead_at is None]
    work_s = backlog_work_s(mean_job_s=mean_job_s, queued_jobs=queued,
                            running_for_s=[now - started for _, started in alive],
                            running_unknown=len(running) - len(alive))
    return Snapshot(now=now, queued_jobs=queued, running_jobs=len(running),
                    backlog_work_s=work_s,
                    instances=tuple(m.as_instance(now) for m in machines
                                    if m.destroyed_at is None),
                    offers=offers, spent_today=spent_today, failed_machines=failed_machines,
                    last_rent_at=last_rent_at, gpu_speed=dict(gpu_speed),
                    mean_job_s=mean_job_s, arrivals_per_s=arrivals_per_s, boot_s=boot_s,
                    boots=boots)


class Costs(NamedTuple):
    boot: float
    idle: float
    busy: float
    metered: float
    work_done_s: float
    billed_s: float
    booting_s: float


def fleet_costs(machines: list[Machine], *, end: float) -> Costs:
    """The bill and the meter of every machine, ``end`` standing in for destroys to come."""
    boot = idle = busy = metered = work_done_s = billed_s = booting_s = 0.0
    for m in machines:
        loading_s, up_s = m.phases_s(end)
        boot += loading_s * m.storage_per_hour / 3600
        idle += (up_s - m.busy_s) * m.price_per_hour / 3600
        busy += m.busy_s * m.price_per_hour / 3600
        metered += (loading_s + up_s) * m.price_per_hour / 3600
        work_done_s += m.work_done_s
        billed_s, booting_s = billed_s + loading_s + up_s, booting_s + loading_s
    return Costs(boot, idle, busy, metered, work_done_s, billed_s, booting_s)
