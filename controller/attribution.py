"""How much of today's machine time jobs paid for: the leases' share of the fleet's bill.

A machine bills from its rent to its destruction; a job pays only while it holds the machine
(its lease: controller/job_costs.py). The rest (boot, idle, drain, a vanished holder's silence)
is the fleet's own cost, which no job pays: the provider's bill today minus what is attributed
here. Counted per UTC day like the spend meter (controller/spend.py), a lease that spans
midnight split at it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from broker.dispatch import Lease
from controller.job_costs import lease_cost
from controller.spend import utc_day

__all__ = ["Attribution"]


def _midnight(day: str) -> float:
    return dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp()


class Attribution:
    def __init__(self, *, now: float, day: str | None = None, ended: float = 0.0) -> None:
        """Resume from a stored (day, ended) when it is today's."""
        self.day = utc_day(now)
        self._ended = ended if day == self.day else 0.0  # leases that ended today

    def _roll(self, now: float) -> None:
        if utc_day(now) != self.day:
            self.day, self._ended = utc_day(now), 0.0

    def lease_ended(self, lease: Lease, ended_at: float) -> None:
        self._roll(ended_at)
        self._ended += lease_cost(lease, ended_at, since=_midnight(self.day))

    @property
    def ended_today(self) -> float:
        return self._ended

    def today(self, live: Iterable[Lease], now: float) -> float:
        """Dollars attributed since UTC midnight: the leases that ended, and the live ones'
        time until ``now``."""
        self._roll(now)
        start = _midnight(self.day)
        return self._ended + sum(lease_cost(lease, now, since=start) for lease in live)
