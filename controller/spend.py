"""Spend accounting: the fleet's dollars since UTC midnight, accrued tick by tick.

The meter charges every machine we hold, from the moment its rent is recorded until it is
verified gone, at its price per hour: that is when a provider bills (Vast.ai bills a booting
machine's storage and a draining one's GPU), at the full price even while an image loads, so
for the machines on record it errs high, because the daily cap is only as good as this figure.
Orphans (not on record) are not charged here; they are destroyed within a tick or two.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

from loguru import logger

from controller.providers.base import ProviderError

__all__ = ["ProviderBill", "SpendMeter", "utc_day"]


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


class ProviderBill:
    """The provider's own bill today, where it tells one: the account credit spent since the
    first reading of the UTC day (Vast.ai's ``credit``). Read while machines bill, and once
    more after the last one goes; a restart the same day resumes from the stored start."""

    def __init__(self, read_credit: Callable[[], Awaitable[float | None]], *,
                 day: str | None = None, credit_at_day_start: float | None = None) -> None:
        self._read = read_credit
        self._credit: float | None = None
        self._moving = True  # read again: machines were billing at the last read
        self._day: str | None = None
        self._resumed_day = day
        self.credit_at_day_start = credit_at_day_start if day is not None else None

    async def today(self, now: float, billing: bool) -> float | None:
        """Dollars billed today, or None when the provider bills nothing we can read (the
        local one). ``billing``: machines are on record now."""
        if billing or self._moving:
            try:
                self._credit = await self._read()
            except ProviderError as exc:
                logger.warning("account credit not read: {error}", error=str(exc))
            self._moving = billing
        if self._credit is None:
            return None
        day = utc_day(now)
        if self._day != day:
            if not (self._day is None and self._resumed_day == day
                    and self.credit_at_day_start is not None):
                self.credit_at_day_start = self._credit  # a new day starts here
            self._day = day
        assert self.credit_at_day_start is not None
        return max(0.0, self.credit_at_day_start - self._credit)
