"""The simulated fleet's machines and jobs, and the ``Snapshot`` the real loop would observe.

The snapshot is built the way the loop builds it: queued and running counts as the JOBS
consumer reports them (a job whose agent died stays "running" until its redelivery), backlog in
estimated encoder seconds, instances as the fleet KV and heartbeats show them (a machine whose
agent died keeps its last state and stops heartbeating), the market's listed offers.
"""

from __future__ import annotations

from dataclasses import dataclass

from controller.estimate import backlog_work_s
from controller.policy import Instance, Offer, Snapshot

__all__ = ["JobState", "Machine", "build_snapshot"]


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
    job: int | None = None  # index into the run's jobs
    job_token: int = 0  # bumps on every start; stale done/death events carry an old one
    job_started_at: float = 0.0
    job_duration_s: float = 0.0
    jobs_started: int = 0
    busy_s: float = 0.0  # running jobs, lost work included
    idle_since: float | None = None
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
        """Its agent would pull a job now."""
        return (self.booted_at is not None and self.dead_at is None and not self.draining
                and self.job is None and self.destroyed_at is None)

    def as_instance(self, now: float) -> Instance:
        if self.booted_at is None:
            state, beat = "booting", None
        else:
            beat = self.dead_at if self.dead_at is not None else now
            state = ("draining" if self.draining
                     else "busy" if self.job is not None else "idle")
        return Instance(instance_id=self.instance_id, machine_id=self.machine_id,
                        price_per_hour=self.price_per_hour,
                        state=state,  # type: ignore[arg-type]
                        launched_at=self.launched_at, last_heartbeat_at=beat,
                        idle_since=self.idle_since if self.job is None else None,
                        job_id=None if self.job is None else f"j{self.job}")


@dataclass
class JobState:
    work_s: float  # encoder seconds at speed 1.0: the truth, which the policy never sees
    arrival_s: float
    started_at: float | None = None  # the first start: what the client's wait ends on
    done_at: float | None = None
    operation: str = "job"  # the controller's estimate learns per operation


def build_snapshot(*, now: float, queued: int, mean_job_s: float,
                   running: list[Machine | None],
                   machines: list[Machine], offers: tuple[Offer, ...], spent_today: float,
                   failed_machines: frozenset[int], last_rent_at: float | None,
                   gpu_speed: dict[str, float], arrivals_per_s: float = 0.0,
                   boot_s: float | None = None) -> Snapshot:
    """``running``: the machine running each job in flight (None once its agent died: the
    consumer still holds the job until the redelivery). The backlog's work is the live
    controller's estimate (controller/estimate.py) from ``mean_job_s``, the finished jobs'
    mean machine time, and the running jobs' ages; never a job's true work, which no
    deployment knows before it has run."""
    alive = [m for m in running if m is not None and m.dead_at is None]
    work_s = backlog_work_s(mean_job_s=mean_job_s, queued_jobs=queued,
                            running_for_s=[now - m.job_started_at for m in alive],
                            running_unknown=len(running) - len(alive))
    return Snapshot(now=now, queued_jobs=queued, running_jobs=len(running),
                    backlog_work_s=work_s,
                    instances=tuple(m.as_instance(now) for m in machines
                                    if m.destroyed_at is None),
                    offers=offers, spent_today=spent_today, failed_machines=failed_machines,
                    last_rent_at=last_rent_at, gpu_speed=dict(gpu_speed),
                    mean_job_s=mean_job_s, arrivals_per_s=arrivals_per_s, boot_s=boot_s)
