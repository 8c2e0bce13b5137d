"""How much work the backlog holds: the one estimate the live controller and the simulator
both hand the policy (controller/policy.py ``Snapshot.backlog_work_s``).

Nobody knows a job's work before it has run: the estimate is the mean machine time of the
jobs that finished lately, per operation. A simulator that handed the policy each job's true
work would decide with knowledge no deployment has, and its figures would flatter the policy
(issue 13, lever 5); so it learns from finished jobs the way the controller does.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["PRIOR_JOB_S", "JobTimes", "backlog_work_s", "ewma"]

PRIOR_JOB_S = 60.0  # a job's machine time before any has been measured
_EWMA = 0.2  # weight of the newest result


def ewma(old: float | None, new: float) -> float:
    return new if old is None else (1 - _EWMA) * old + _EWMA * new


class JobTimes:
    """Machine seconds per job by operation, a moving average of the finished attempts."""

    def __init__(self) -> None:
        self.by_operation: dict[str, float] = {}

    def learn(self, operation: str, seconds: float) -> None:
        self.by_operation[operation] = ewma(self.by_operation.get(operation), seconds)

    def mean(self) -> float:
        """Over the operations seen (each counts once), or the prior before any."""
        if not self.by_operation:
            return PRIOR_JOB_S
        return sum(self.by_operation.values()) / len(self.by_operation)


def backlog_work_s(*, mean_job_s: float, queued_jobs: int, running_for_s: Sequence[float],
                   running_unknown: int = 0) -> float:
    """Queued jobs at the mean job time. A running job whose age is known (``running_for_s``)
    at what is left of the mean, or, past half the mean, at as long again as it has run: a
    job far over the mean (a dripping download, a huge input) keeps its machine, and the
    queue behind it needs another. ``running_unknown`` jobs (running, age unknown: an agent
    lost mid-job whose job the consumer still holds) at half the mean."""
    aged = sum(max(mean_job_s - age, age) for age in running_for_s)
    return mean_job_s * (queued_jobs + 0.5 * running_unknown) + aged
