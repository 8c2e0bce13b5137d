"""The agents waiting for work: each one's open ``fleet.work.<id>`` request, until a job is
granted to it or its wait runs out. The longest waiter is served first. An agent has at most
one open request: a new one supersedes the old (which is answered empty at once).
And ``wait_any``: the scaling loop's wait between ticks, which a newly queued job cuts short.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.msg import Msg

from broker.dispatch import WorkReply
from controller.holders import respond

__all__ = ["MAX_WAIT_S", "Waiter", "Waiters", "wait_any"]

MAX_WAIT_S = 30.0  # the longest a work request is held open


@dataclass
class Waiter:
    msg: Msg
    agent_id: str
    until: float  # monotonic: answer (empty) by then
    price_per_hour: float = 0.0


class Waiters:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._mono = monotonic
        self._waiting: dict[str, Waiter] = {}  # agent id -> its open work request
        self._wake = asyncio.Event()

    def __bool__(self) -> bool:
        return bool(self._waiting)

    async def withdraw(self, agent_id: str) -> None:
        """Answer ``agent_id``'s open request empty (superseded, or it stopped waiting)."""
        if (old := self._waiting.pop(agent_id, None)) is not None:
            await respond(old.msg, WorkReply())

    def add(self, msg: Msg, agent_id: str, wait_s: float, price_per_hour: float) -> None:
        self._waiting[agent_id] = Waiter(msg, agent_id,
                                         until=self._mono() + min(wait_s, MAX_WAIT_S),
                                         price_per_hour=price_per_hour)
        self._wake.set()

    async def expire(self) -> None:
        """Answer, empty, every request whose wait ran out."""
        now = self._mono()
        for agent_id, waiter in list(self._waiting.items()):
            if waiter.until <= now:
                del self._waiting[agent_id]
                await respond(waiter.msg, WorkReply())

    async def someone(self, timeout_s: float) -> None:
        """Return once an agent waits, or after ``timeout_s``."""
        if not self._waiting:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout_s)

    def first_deadline_s(self) -> float:
        """Seconds until the earliest wait runs out."""
        return min(w.until for w in self._waiting.values()) - self._mono()

    def next(self) -> Waiter | None:
        """The longest waiter whose wait has not run out, taken off the list."""
        now = self._mono()
        live = [w for w in self._waiting.values() if w.until > now]
        if not live:
            return None
        first = min(live, key=lambda w: w.until)
        del self._waiting[first.agent_id]
        return first


async def wait_any(a: asyncio.Event, b: asyncio.Event, timeout_s: float) -> None:
    """Until either event is set, or ``timeout_s``."""
    waits = {asyncio.create_task(a.wait()), asyncio.create_task(b.wait())}
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
