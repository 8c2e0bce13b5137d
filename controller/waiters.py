"""The agents waiting for work: each one's open ``fleet.work.<id>`` request, until a job is
granted to it or its wait runs out. The longest waiter is served first. An agent has at most
one open request per slot: a new one supersedes the old (which is answered empty at once).
And ``wait_any``: the scaling loop's wait between ticks, which a newly queued job cuts short.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.msg import Msg

from broker.dispatch import WorkReply, WorkRequest
from controller.holders import respond

__all__ = ["MAX_WAIT_S", "Waiter", "Waiters", "wait_any"]

MAX_WAIT_S = 30.0  # the longest a work request is held open


@dataclass
class Waiter:
    msg: Msg
    agent_id: str
    slot: int
    until: float  # monotonic: answer (empty) by then
    price_per_hour: float = 0.0


class Waiters:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic, *,
                 max_slots: int = 1) -> None:
        self._mono = monotonic
        self.max_slots = max_slots
        self._slots: dict[str, int] = {}  # agent id -> the slot count it first declared
        self._waiting: dict[tuple[str, int], Waiter] = {}  # (agent, slot) -> its request
        self._wake = asyncio.Event()

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def refusal(self, agent_id: str, request: WorkRequest) -> str:
        """Why ``request`` is refused ("" if it is not). An agent's slot count is fixed at
        its first declaration, capped at ``max_slots``: each of its jobs pays price / slots,
        so one that could change it could price one job at the whole machine and the next at
        a share, and one that could exceed the cap could hoard the queue."""
        slots = self._slots.setdefault(agent_id, min(request.slots, self.max_slots))
        if request.slot < slots and min(request.slots, self.max_slots) == slots:
            return ""
        return (f"slot {request.slot} of {request.slots}: this agent runs {slots} slot(s) "
                f"(at most {self.max_slots} here), numbered from 0")

    def slots(self, agent_id: str) -> int:
        return self._slots.get(agent_id, 1)

    async def withdraw(self, agent_id: str, slot: int) -> None:
        """Answer that slot's open request empty (superseded, or it stopped waiting)."""
        if (old := self._waiting.pop((agent_id, slot), None)) is not None:
            await respond(old.msg, WorkReply())

    def add(self, msg: Msg, agent_id: str, slot: int, wait_s: float,
            price_per_hour: float) -> None:
        self._waiting[agent_id, slot] = Waiter(msg, agent_id, slot,
                                               until=self._mono() + min(wait_s, MAX_WAIT_S),
                                               price_per_hour=price_per_hour)
        self._wake.set()

    async def expire(self, holding: frozenset[str] = frozenset()) -> None:
        """Answer, empty, every request whose wait ran out; and forget the slot count of
        each agent with no request open and no lease (in ``holding``): its next request
        declares it afresh, and with no job in hand there is none to price differently.
        Machines come and go all day; their counts must not pile up."""
        now = self._mono()
        for key, waiter in list(self._waiting.items()):
            if waiter.until <= now:
                del self._waiting[key]
                await respond(waiter.msg, WorkReply())
        asking = {agent_id for agent_id, _ in self._waiting}
        for agent_id in [a for a in self._slots if a not in holding and a not in asking]:
            del self._slots[agent_id]

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
        del self._waiting[first.agent_id, first.slot]
        return first


async def wait_any(a: asyncio.Event, b: asyncio.Event, timeout_s: float) -> None:
    """Until either event is set, or ``timeout_s``."""
    waits = {asyncio.create_task(a.wait()), asyncio.create_task(b.wait())}
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
