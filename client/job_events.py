"""Following a tenant's jobs: their events (history and live), outcomes, and whether a job
was ever submitted. ``JobEvents`` is the reading half of the client (client/api.py's ``Client``
adds submitting, cancelling, asking and files); everything here reads the tenant's own events
stream ``EVENTS-<tenant>`` and its live ``events.<tenant>.>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import nats.errors
import nats.js.errors
from loguru import logger
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RawStreamMsg

from broker.events import TERMINAL_KINDS, Cancelled, Event, Failed, Succeeded, event_from_msg
from broker.subjects import (
    DEFAULT_TENANT,
    event_subject,
    events_filter,
    parse_event_subject,
    tenant_events_stream,
    validate_job_id,
    validate_tenant,
)

__all__ = ["JobEvents", "JobNotFound"]


class JobNotFound(LookupError):
    pass


class JobEvents:
    def __init__(self, nc: Nats, *, tenant: str = DEFAULT_TENANT,
                 api_prefix: str | None = None) -> None:
        """``api_prefix``: where this connection reaches the fleet's JetStream API
        (``$JS.FLEET.API`` from a tenant account; None: the account's own ``$JS.API``)."""
        self._nc = nc
        self.tenant = validate_tenant(tenant)
        self.is_tenant = api_prefix is not None  # a tenant account's user, not the fleet's
        self._events = tenant_events_stream(self.tenant)
        self._js = nc.jetstream(prefix=api_prefix) if api_prefix else nc.jetstream()

    async def submitted(self, job_id: str) -> bool:
        """Whether this tenant ever submitted the job (it has events; they are kept 7 days).
        One direct get, no waiting: a job submitted a moment ago may not show yet."""
        try:
            await self._js.get_last_msg(
                self._events, event_subject(self.tenant, validate_job_id(job_id), "*", "*"),
                direct=True)
        except nats.js.errors.NotFoundError:
            return False
        return True

    async def follow_all(self, on_event: Callable[[Event], Awaitable[None]]) -> Subscription:
        """Live events of every job of this tenant (no history), each passed to
        ``on_event``; unsubscribe the returned subscription to stop."""
        async def decoded(msg: Msg) -> None:
            event = _event(msg.subject, msg.headers, msg.data)
            if event is not None:
                await on_event(event)
        return await self._nc.subscribe(event_subject(self.tenant, "*", "*", "*"), cb=decoded)


    async def watch(self, job_id: str, *, timeout_s: float | None = None) -> AsyncIterator[Event]:
        """Every event of the job from its start, then live ones, ending after the terminal one.

        Raises JobNotFound for an id nobody submitted, TimeoutError if the job has not ended
        within ``timeout_s`` (None: wait forever). Events of kinds this version does not know,
        and malformed ones, are skipped.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        await self._require_job(job_id, deadline, timeout_s)
        # An outcome before the job's last requeue (a dead letter run again) is history.
        while True:
            try:
                requeued_at = await self._last_seq(job_id, "requeued")
                break
            except (nats.errors.Error, TimeoutError) as exc:
                await self._outage(exc, deadline, job_id, timeout_s)
        after = 0  # the stream sequence of the last event yielded
        while True:
            # A named pull consumer on the tenant's own events stream, filtered to the job.
            # It lives in memory: a broker restart loses it, and it is made again from where
            # it was (a watch rides out the restart instead of failing a waiting CLI).
            consumer = f"watch-{secrets.token_hex(8)}"
            try:
                sub = await self._follow(job_id, consumer, after)
            except (nats.errors.Error, TimeoutError) as exc:
                await self._outage(exc, deadline, job_id, timeout_s)
                continue
            lost, reconnects = False, self._nc.stats["reconnects"]
            try:
                while True:
                    wait_s = 5.0 if deadline is None else deadline - time.monotonic()
                    if wait_s <= 0:
                        raise TimeoutError(f"job {job_id} did not finish within {timeout_s}s")
                    try:
                        msgs = await sub.fetch(16, timeout=min(wait_s, 5.0))
                    except (nats.errors.TimeoutError, TimeoutError):
                        if self._nc.stats["reconnects"] != reconnects:  # a restart lost it
                            raise nats.errors.Error("reconnected") from None
                        continue
                    for msg in msgs:
                        after = msg.metadata.sequence.stream
                        event = _event(msg.subject, msg.headers, msg.data)
                        if event is not None:
                            yield event
                        if (parse_event_subject(msg.subject)[2] in TERMINAL_KINDS
                                and after > requeued_at):
                            return
            except nats.errors.Error as exc:  # the connection or the consumer went
                lost = True
                await self._outage(exc, deadline, job_id, timeout_s)
            finally:
                if lost:  # (its consumer expires by itself, if it survived)
                    with contextlib.suppress(nats.errors.Error):
                        await sub.unsubscribe()
                else:
                    await self._close(sub, consumer)

    async def _close(self, sub: JetStreamContext.PullSubscription, consumer: str) -> None:
        with contextlib.suppress(nats.errors.Error, TimeoutError):  # closed or draining already
            await sub.unsubscribe()
            # At once, not at its inactive threshold: a tenant may hold only so many.
            await self._js.delete_consumer(self._events, consumer)

    async def _follow(self, job_id: str, consumer: str,
                      after: int) -> JetStreamContext.PullSubscription:
        """A watch's consumer: the job's events from the start, or after sequence ``after``."""
        start = (dict(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1)
                 if after else dict(deliver_policy=DeliverPolicy.ALL))
        await self._js.add_consumer(self._events, ConsumerConfig(
            name=consumer, filter_subject=events_filter(self.tenant, job_id),
            ack_policy=AckPolicy.NONE, mem_storage=True, inactive_threshold=60.0,
            **start))  # type: ignore[arg-type]
        return await self._js.pull_subscribe_bind(consumer=consumer, stream=self._events)

    async def _outage(self, exc: BaseException, deadline: float | None, job_id: str,
                      timeout_s: float | None) -> None:
        """The bus is in trouble (a broker restart): wait a moment and go on, unless the
        connection closed for good or the caller's deadline passed."""
        if self._nc.is_closed:
            raise exc
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"job {job_id} did not finish within {timeout_s}s") from exc
        logger.info("following {job_id} again after a break ({error})", job_id=job_id,
                    error=str(exc) or type(exc).__name__)
        await asyncio.sleep(0.5)

    async def _require_job(self, job_id: str, deadline: float | None,
                           timeout_s: float | None) -> None:
        """Raise JobNotFound unless the job has events. (The queued event reaches the
        tenant's events stream a moment after the gateway stored the job, so a miss is looked
        at again for 2 s.) An outage (a restart, a new stream leader being elected) is
        waited out until ``deadline``."""
        missing_until = time.monotonic() + 2.0
        while True:
            try:
                if await self.submitted(job_id):
                    return
            except (nats.errors.Error, TimeoutError) as exc:
                await self._outage(exc, deadline, job_id, timeout_s)
                missing_until = time.monotonic() + 2.0
                continue
            if time.monotonic() > missing_until:
                raise JobNotFound(f"no job with id {job_id!r} (never submitted, or its "
                                  "events expired)")
            await asyncio.sleep(0.1)

    async def result(self, job_id: str, *,
                     timeout_s: float | None = None) -> Succeeded | Failed | Cancelled:
        """The job's terminal event, waiting for it if the job is still running.

        Does not replay the job's history: it listens for live terminal events first, then
        looks up the last stored one, so an event published in between is never missed.
        Raises JobNotFound for an unknown id, TimeoutError after ``timeout_s`` (None: forever).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        await self._require_job(job_id, deadline, timeout_s)
        live = await self._nc.subscribe(event_subject(self.tenant, job_id, "*", "*"))
        copying = 0  # polls left for the stored copy of a terminal event seen live
        try:
            while True:
                try:
                    stored = await self.outcome(job_id)
                except (nats.errors.Error, TimeoutError) as exc:  # a broker restart
                    await self._outage(exc, deadline, job_id, timeout_s)
                    continue
                if stored is not None:
                    return stored
                wait_s = 5.0 if deadline is None else min(5.0, deadline - time.monotonic())
                if wait_s <= 0:
                    raise TimeoutError(f"job {job_id} did not finish within {timeout_s}s")
                if copying:  # the live event comes a moment before its copy is stored
                    copying -= 1
                    await asyncio.sleep(0.05)
                    continue
                # Re-check the store now and then: a reconnect can drop a live message.
                with contextlib.suppress(nats.errors.TimeoutError):
                    while True:
                        msg = await live.next_msg(timeout=wait_s)
                        if parse_event_subject(msg.subject)[2] in TERMINAL_KINDS:
                            copying = 100
                            break
        finally:
            with contextlib.suppress(nats.errors.Error):
                await live.unsubscribe()

    async def outcome(self, job_id: str) -> Succeeded | Failed | Cancelled | None:
        """The job's outcome if it has one now (no waiting): the one after its last
        ``requeued`` event, if it was run again from its dead letter."""
        requeued_at = await self._last_seq(job_id, "requeued")
        for kind in ("succeeded", "failed", "cancelled"):
            msg = await self._last(job_id, kind)
            if msg is None or (msg.seq or 0) < requeued_at:
                continue
            event = _event(msg.subject or "", msg.headers, msg.data or b"")
            if isinstance(event, (Succeeded, Failed, Cancelled)):
                return event
        return None

    async def _last(self, job_id: str, kind: str) -> RawStreamMsg | None:
        try:
            return await self._js.get_last_msg(
                self._events, event_subject(self.tenant, job_id, kind, "*"), direct=True)
        except nats.js.errors.NotFoundError:
            return None

    async def _last_seq(self, job_id: str, kind: str) -> int:
        """The stream sequence of the job's last event of ``kind`` (0: none)."""
        msg = await self._last(job_id, kind)
        return msg.seq or 0 if msg is not None else 0


def _event(subject: str, headers: dict[str, str] | None, data: bytes) -> Event | None:
    """One stored or live event, or None (logged) when it cannot be read: a reader never dies
    of what someone else published."""
    try:
        return event_from_msg(subject, headers, data)
    except ValueError as exc:
        logger.warning("unreadable event on {subject} skipped: {error}", subject=subject,
                       error=str(exc))
        return None
