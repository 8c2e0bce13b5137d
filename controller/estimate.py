"""How much work the backlog holds: the one estimate the live controller and the simulator
both hand the policy (controller/policy.py ``Snapshot.backlog_work_s``).

Nobody knows a job's work before it has run: the estimate is the mean machine time of the
jobs that finished lately, per operation. A simulator that handed the policy each job's true
work would decide with knowledge no deployment has, and its figures would flatter the policy
(issue 13, lever 5); so it learns from finished jobs the way the controller does.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable, Sequence
from typing import NamedTuple

__all__ = ["PRIOR_JOB_S", "ArrivalRate", "BootTimes", "JobTimes", "OutbidRates", "Outbids",
           "backlog_work_s", "ewma", "late_share"]

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


class BootTimes:
    """Rent to first heartbeat over the last ``keep`` rents: the median boot a machine rented
    now is expected to take (the image, the hosts and the registry decide it, and all three
    change). ``None`` until ``least`` machines have come up: the policy's configured
    ``expected_boot_s`` stands in. A median, so one slow host moves it little.

    A machine destroyed before it came up (a hedge's spare, a stuck boot) took at least as
    long as it had run: it counts as that, censored (a Kaplan-Meier median). Counting only
    the machines that came up would measure the faster of each hedged pair and expect boots
    far too short."""

    def __init__(self, keep: int = 40, least: int = 3) -> None:
        self._seen: deque[tuple[float, bool]] = deque(maxlen=keep)  # (seconds, came up)
        self._least = least

    def add(self, seconds: float) -> None:
        if seconds >= 0:
            self._seen.append((seconds, True))

    def censored(self, seconds: float) -> None:
        """A machine destroyed ``seconds`` after its rent, before it came up."""
        if seconds >= 0:
            self._seen.append((seconds, False))

    def expected(self) -> float | None:
        boots = self.seen()
        if not boots:
            return None
        for seconds, surviving in _still_booting(boots):
            if surviving <= 0.5:
                return seconds
        return max(s for s, _ in boots)  # over half still booting when last seen

    def seen(self) -> tuple[tuple[float, bool], ...]:
        """The recent boots, (seconds, came up), for ``late_share``; empty until ``least``
        machines have come up."""
        if sum(up for _, up in self._seen) < self._least:
            return ()
        return tuple(self._seen)


def late_share(boots: Sequence[tuple[float, bool]], seconds: float) -> float | None:
    """The share of rents whose machine takes longer than ``seconds`` to come up, from
    ``BootTimes.seen()`` (a Kaplan-Meier estimate, so machines destroyed while booting count
    as censored); None without boots."""
    late = None
    for at, surviving in _still_booting(boots):
        if at > seconds:
            break
        late = surviving
    if late is None:
        return 1.0 if boots else None
    return late


def _still_booting(boots: Iterable[tuple[float, bool]]) -> Iterable[tuple[float, float]]:
    """(seconds, share of rents still booting just after it) at each boot that came up."""
    seen = sorted(boots, key=lambda s: (s[0], not s[1]))
    left, surviving = len(seen), 1.0
    for seconds, up in seen:
        if up:
            surviving *= 1 - 1 / left
            yield seconds, surviving
        left -= 1


class ArrivalRate:
    """Jobs submitted per second: the median of the per-minute counts over the last
    ``window_s``, minutes without a job counting as zero. A median, so a batch of hundreds in
    one minute (sized for through the queue) does not read as a busy hour, and it needs more
    than half the window's minutes busy to be above zero. It sizes the warm floor
    (``Policy.warm_per_load``): a rate that lags the day by some minutes costs a boot wait
    when the day picks up, and some idle minutes when it winds down."""

    def __init__(self, window_s: float = 900.0, minute_s: float = 60.0) -> None:
        self._minute_s = minute_s
        self._minutes = max(1, round(window_s / minute_s))
        self._counts: deque[tuple[int, int]] = deque()  # (minute, jobs), oldest first
        self._total: int | None = None
        self._now_minute = 0

    def observe(self, now: float, total: int) -> None:
        """``total``: jobs submitted since some fixed start (a stream's last sequence), read
        at ``now``; the first reading only sets the start."""
        if self._total is not None and total > self._total:
            minute = int(now // self._minute_s)
            if self._counts and self._counts[-1][0] == minute:
                self._counts[-1] = (minute, self._counts[-1][1] + total - self._total)
            else:
                self._counts.append((minute, total - self._total))
        self._total = total if self._total is None else max(self._total, total)
        self._now_minute = int(now // self._minute_s)

    def per_s(self) -> float:
        if not self._counts:
            return 0.0
        # The minutes that ended, within the window: the current one is still counting.
        last = self._now_minute - 1
        first = last - self._minutes + 1
        while self._counts and self._counts[0][0] < first:
            self._counts.popleft()
        counts = {m: n for m, n in self._counts if m <= last}
        per_minute = [counts.get(m, 0) for m in range(first, last + 1)]
        return statistics.median(per_minute) / self._minute_s


class OutbidRates(NamedTuple):
    """Outbids per machine-hour: ``by_model`` for the GPU models the fleet has run, ``other``
    (the rate over all of them) for any model it has not."""

    by_model: dict[str, float]
    other: float = 0.0

    def of(self, gpu_name: str) -> float:
        return self.by_model.get(gpu_name, self.other)


class Outbids:
    """How often the market takes an interruptible machine back, by GPU model. No rate is
    published (issue 13), so it is learned from the fleet's own machines: a model's outbids
    over its machine-hours (rent to destroy, the live ones so far), shrunk toward the rate
    over all models by ``prior_h`` machine-hours, so that one outbid of a model rented once
    for ten minutes does not read as six an hour. On-demand machines are never outbid: every
    rate stays 0, and the ranking is as without it."""

    def __init__(self, prior_h: float = 2.0) -> None:
        self._hours: dict[str, float] = {}
        self._outbids: dict[str, int] = {}
        self._prior_h = prior_h

    def ended(self, gpu_name: str, hours: float, *, outbid: bool) -> None:
        self._hours[gpu_name] = self._hours.get(gpu_name, 0.0) + max(0.0, hours)
        self._outbids[gpu_name] = self._outbids.get(gpu_name, 0) + int(outbid)

    def rates(self, live: Iterable[tuple[str, float]] = ()) -> OutbidRates:
        """``live``: (GPU model, hours since its rent) of each machine still up."""
        hours = dict(self._hours)
        for gpu_name, h in live:
            hours[gpu_name] = hours.get(gpu_name, 0.0) + max(0.0, h)
        outbids = sum(self._outbids.values())
        if not outbids:
            return OutbidRates({})
        pooled = outbids / max(sum(hours.values()), self._prior_h)
        return OutbidRates({gpu_name: (self._outbids.get(gpu_name, 0) + pooled * self._prior_h)
                            / (h + self._prior_h) for gpu_name, h in hours.items()}, pooled)
