"""What the controller reads off the bus: the backlog, the agents' heartbeats, measured speeds.

The backlog is the jobs consumer's ``num_pending + num_ack_pending``, asked of the
consumer's leader through the JetStream API (a replica's count can be stale, and a stale count
scales the wrong way). Work-seconds are estimated from what finished jobs took: the mean of
recent results per operation (a prior until there are results), since a queued job's media
length is unknown until an agent probes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec
from loguru import logger
from msgspec import Struct
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from broker.events import Succeeded, decode_event
from broker.heartbeats import Heartbeat, decode_heartbeat
from broker.subjects import JOBS_CONSUMER, JOBS_STREAM
from controller.estimate import JobTimes, backlog_work_s, ewma
from controller.policy import Offer
from controller.providers.base import Provider, ProviderError
from controller.reconcile import Seen

__all__ = ["Backlog", "HeartbeatBook", "OfferBook", "SpeedBook", "read_backlog"]



class Backlog(Struct, frozen=True, kw_only=True):
    queued_jobs: int
    running_jobs: int
    submitted: int = 0  # jobs ever stored in JOBS: its last sequence, for the arrival rate


async def read_backlog(js: JetStreamContext) -> Backlog:
    info = await js.consumer_info(JOBS_STREAM, JOBS_CONSUMER)
    pending = info.num_pending or 0
    # Every JOBS message is a job the consumer takes, so the last stream sequence is the
    # one it delivered last plus those not yet delivered.
    delivered = (info.delivered.stream_seq if info.delivered else 0) or 0
    return Backlog(queued_jobs=pending, running_jobs=info.num_ack_pending or 0,
                   submitted=delivered + pending)


_LIES = 3  # heartbeats in a row that claim a job the agent does not hold: a liar


class HeartbeatBook:
    """The latest heartbeat per agent id, kept by a core subscription (heartbeats aren't stored).

    With ``holds`` (the dispatcher's answer to "which jobs does this agent hold?"), what a
    heartbeat says about work is replaced by the truth before anyone reads it: a machine is
    busy because it holds a job, never because it says so. One that keeps claiming a job it
    does not hold lands in ``liars`` (the controller destroys it); a single mismatch is the
    normal race of a job that just ended."""

    def __init__(self, clock: Callable[[], float],
                 holds: Callable[[str], list[str]] | None = None) -> None:
        self._clock = clock
        self._holds = holds
        self.seen: dict[str, Seen] = {}
        self.liars: set[str] = set()
        self._mismatches: dict[str, int] = {}
        self._sub: Subscription | None = None

    async def start(self, nc: Client) -> None:
        self._sub = await nc.subscribe("agents.*.heartbeat", cb=self.on_beat)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    def heard(self, within_s: float) -> list[Heartbeat]:
        """The last heartbeat of each agent heard within ``within_s``."""
        now = self._clock()
        return [s.beat for s in self.seen.values() if now - s.received_at <= within_s]

    async def on_beat(self, msg: Msg) -> None:
        """Take one heartbeat message (``start`` feeds every one here)."""
        try:
            beat = decode_heartbeat(msg.data)
        except msgspec.DecodeError:
            logger.warning("undecodable heartbeat on {subject}", subject=msg.subject)
            return
        # The subject is what the server checked against the sender's rights; a body naming
        # another agent is a forgery (it could get that machine destroyed mid-job).
        if msg.subject.split(".")[1] != beat.agent_id:
            logger.warning("heartbeat for {claimed} on {subject} ignored",
                           claimed=beat.agent_id, subject=msg.subject)
            return
        self.seen[beat.agent_id] = Seen(beat=self._checked(beat), received_at=self._clock())

    def _checked(self, beat: Heartbeat) -> Heartbeat:
        if self._holds is None or beat.state == "stopped":
            return beat
        held = self._holds(beat.agent_id)
        claimed = set(beat.jobs) | ({beat.job_id} if beat.job_id is not None else set())
        if not claimed - set(held):  # holding more than it says: a job granted just now
            self._mismatches.pop(beat.agent_id, None)
        else:
            n = self._mismatches[beat.agent_id] = self._mismatches.get(beat.agent_id, 0) + 1
            if n == _LIES:
                logger.warning("{agent} keeps claiming job(s) {jobs}, which it does not hold",
                               agent=beat.agent_id, jobs=sorted(claimed - set(held)))
                self.liars.add(beat.agent_id)
        state = beat.state if beat.state == "draining" else ("busy" if held else "idle")
        return msgspec.structs.replace(beat, job_id=held[0] if held else None,
                                       jobs=sorted(held), state=state)

    def forget(self, agent_id: str) -> None:
        self.seen.pop(agent_id, None)
        self._mismatches.pop(agent_id, None)
        self.liars.discard(agent_id)


class SpeedBook:
    """Machine seconds per job by operation, and media seconds encoded per second by GPU model,
    learned from ``succeeded`` events (core subscription: only results from now on count)."""

    def __init__(self, gpu_of: Callable[[str], str | None]) -> None:
        self._gpu_of = gpu_of  # agent id -> GPU model, from the fleet records
        self.times = JobTimes()
        self.gpu_speed: dict[str, float] = {}
        self._sub: Subscription | None = None

    async def start(self, nc: Client) -> None:
        self._sub = await nc.subscribe("events.*.*.succeeded.*", cb=self._on_result)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_result(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except msgspec.DecodeError:
            return
        if isinstance(event, Succeeded):
            self.learn(event)

    def learn(self, event: Succeeded) -> None:
        self.times.learn(event.operation, event.timings.total_s)
        gpu = self._gpu_of(event.agent_id)
        if gpu and event.timings.encode_s > 0 and event.output.duration_s > 0:
            speed = event.output.duration_s / event.timings.encode_s
            self.gpu_speed[gpu] = ewma(self.gpu_speed.get(gpu), speed)

    def work_s(self, backlog: Backlog, running_for_s: Sequence[float] = ()) -> float:
        """The backlog's work (controller/estimate.py); ``running_for_s``: the ages of the
        running jobs the dispatcher holds leases for; the others' ages are unknown."""
        return backlog_work_s(mean_job_s=self.times.mean(), queued_jobs=backlog.queued_jobs,
                              running_for_s=running_for_s,
                              running_unknown=max(0, backlog.running_jobs - len(running_for_s)))


class OfferBook:
    """The provider's offers, searched at most every ``ttl_s`` (Vast.ai limits searches to
    about ten a minute) and only when renting could follow; an offer asked for once leaves
    the book whatever the answer (an offer is rented once; a retry could rent two)."""

    def __init__(self, provider: Provider, ttl_s: float = 30.0) -> None:
        self._provider = provider
        self._ttl_s = ttl_s
        self._offers: tuple[Offer, ...] = ()
        self._at = float("-inf")

    async def current(self, now: float) -> tuple[Offer, ...]:
        """Raises ProviderError when a due search fails."""
        if now - self._at > self._ttl_s or self._ttl_s <= 0:
            self._offers = tuple(await self._provider.search_offers())
            self._at = now
        return self._offers

    async def current_or_none(self, now: float, alarms: list[str]) -> tuple[Offer, ...]:
        """``current``, or no offers and an alarm when the search fails."""
        try:
            return await self.current(now)
        except ProviderError as exc:
            alarms.append(f"offer search failed: {exc}")
            return ()

    def take(self, offer_id: int) -> Offer | None:
        offer = next((o for o in self._offers if o.offer_id == offer_id), None)
        self._offers = tuple(o for o in self._offers if o.offer_id != offer_id)
        return offer
