"""Spend accounting: the fleet's dollars since UTC midnight, accrued tick by tick.

The meter charges every machine we hold, from the moment its rent is recorded until it is
verified gone, at its price per hour: that is when a provider bills (Vast.ai bills a booting
machine's storage and a draining one's GPU), at the full price even while an image loads, so
for the machines on record it errs high, because the daily cap is only as good as this figure.
Orphans (not on record) are not charged here; they are destroyed within a tick or two.
"""

from __future__ import annotations

import datetime as dt

__all__ = ["SpendMeter", "utc_day"]


def utc_day(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d")


class SpendMeter:
    def __init__(self, *, now: float, day: str | None = None, spent: float = 0.0) -> None:
        """Resume from a stored (day, spent) if it is today's; else start the day at zero."""
        self.day = utc_day(now)
        self.spent = spent if day == self.day else 0.0
        self._last = now

    def accrue(self, rate_per_hour: float, now: float) -> float:
        """Charge ``rate_per_hour`` for the time since the last call; return today's total."""
        if now <= self._last:
            return self.spent
        today = utc_day(now)
        if today != self.day:
            midnight = dt.datetime.strptime(today, "%Y-%m-%d").replace(tzinfo=dt.UTC)
            self.day, self.spent = today, 0.0
            self._last = max(self._last, midnight.timestamp())
        self.spent += rate_per_hour * (now - self._last) / 3600.0
        self._last = now
        return self.spent
