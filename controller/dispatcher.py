"""The dispatcher: the one consumer of JOBS. It hands each agent one job and records what
happens to it from that agent alone.

An agent's credentials are assumed stolen (its host can read them), so nothing an agent says is
written anywhere unless it is about the job this dispatcher leased to it. The lease is kept
here (and in KV ``leases``, so a controller restart does not cost the job in hand); the
JetStream delivery behind it is renewed only while its holder keeps reporting, and acked only
once its outcome is recorded. The protocol is in broker/dispatch.py.

What that buys, each an attack that now fails (tests/test_dispatch.py):
- an agent holds at most one job; asking for another hands the first back;
- a report or an upload about any other job is refused (``not_holder``);
- a job is acked only with its outcome recorded; a holder that goes quiet loses the job within
  ``ack_wait`` and it runs elsewhere;
- a result's digest and size are computed here from the bytes stored, not taken from the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
import nats.errors
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ObjectInfo
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from broker.dispatch import (
    CHUNKS_HEADER,
    ERROR_HEADER,
    JOB_HEADER,
    NAME_HEADER,
    OFFSET_HEADER,
    SHA256_HEADER,
    SIZE_HEADER,
    Grant,
    Hold,
    Lease,
    Release,
    Report,
    ReportReply,
    WorkReply,
    WorkRequest,
    decode_input_request,
    decode_lease,
    decode_report,
    decode_work_request,
    encode,
)
from broker.events import (
    Event,
    Failed,
    OutputInfo,
    Progress,
    Retrying,
    Started,
    Succeeded,
    encode_event,
)
from broker.jobs import decode_job, object_inputs
from broker.jobstate import JobStates, ensure_announced
from broker.objects import (
    ObjectMissing,
    ObjectWriter,
    StoreFull,
    digest_hex,
    iter_chunks,
    object_info,
)
from broker.subjects import (
    AGENT_ID_RE,
    CONTROLLER_PUBLISHER,
    EVENTS_STREAM,
    JOBS_CONSUMER,
    JOBS_STREAM,
    JOBSTATE_BUCKET,
    LEASES_BUCKET,
    event_subject,
    inputs_bucket,
    parse_job_subject,
    results_bucket,
    validate_job_id,
    validate_tenant,
)

__all__ = ["Dispatcher"]

_MAX_WAIT_S = 30.0  # the longest a work request is held open
_MAX_RETRY_DELAY_S = 3600.0  # an agent's retry delay beyond this is cut to it
_MIN_PROGRESS_S = 0.1  # a holder's progress events beyond one per this are dropped
_STALE_HOLDS = 10  # ack_waits of silence after which a lease record is dropped
_FILE_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass
class _Reading:
    """One input being read by the holder: its chunks, read ahead in batches."""

    info: ObjectInfo
    chunks: AsyncGenerator[bytes, None]
    position: int = 0  # the index of the next chunk

    async def close(self) -> None:
        await self.chunks.aclose()


@dataclass
class _Held:
    lease: Lease
    heard_at: float  # the last report from the holder (monotonic)
    upload: ObjectWriter | None = None
    stored: OutputInfo | None = None  # the committed result (a retried report reuses it)
    reading: dict[str, _Reading] = field(default_factory=dict)  # inputs being read
    started: bool = False  # one started event per lease
    progress_at: float = float("-inf")  # the last progress event published (monotonic)


@dataclass
class _Waiter:
    msg: Msg
    agent_id: str
    until: float  # monotonic: answer (empty) by then


class Dispatcher:
    def __init__(self, js: JetStreamContext, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._js = js
        self._clock = clock
        self._mono = monotonic
        self._held: dict[str, _Held] = {}  # agent id -> its one job
        self._waiting: dict[str, _Waiter] = {}  # agent id -> its open work request
        self._wake = asyncio.Event()
        self._subs: list[Subscription] = []
        self._psub: JetStreamContext.PullSubscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._locks: dict[str, asyncio.Lock] = {}
        self._feeder: asyncio.Task[None] | None = None
        self._nc: Client | None = None
        self._states: JobStates | None = None
        self._leases: KeyValue | None = None
        self._ack_wait_s = 30.0
        self._max_deliver = 5

    # -- what the rest of the controller asks ---------------------------------------------

    def holds(self, agent_id: str) -> str | None:
        """The job id ``agent_id`` holds right now, if any: the truth a heartbeat's "busy"
        is checked against."""
        held = self._held.get(agent_id)
        if held is None or self._mono() - held.heard_at > self._ack_wait_s:
            return None
        return held.lease.job_id

    def running_for_s(self) -> list[float]:
        """How long each job in hand has been held (for the backlog estimate)."""
        now, mono = self._clock(), self._mono()
        return [max(0.0, now - held.lease.granted_at) for held in self._held.values()
                if mono - held.heard_at <= self._ack_wait_s]

    # -- life ------------------------------------------------------------------------------

    async def start(self, nc: Client) -> None:
        self._nc = nc
        self._states = JobStates(await self._js.key_value(JOBSTATE_BUCKET))
        self._leases = await self._js.key_value(LEASES_BUCKET)
        info = await self._js.consumer_info(JOBS_STREAM, JOBS_CONSUMER)
        self._ack_wait_s = info.config.ack_wait or 30.0
        self._max_deliver = info.config.max_deliver or 5
        await self._load_leases()
        psub = await self._js.pull_subscribe_bind(consumer=JOBS_CONSUMER, stream=JOBS_STREAM)
        self._psub = psub
        self._subs = [await nc.subscribe("fleet.work.*", cb=self._on_work),
                      await nc.subscribe("fleet.report.*", cb=self._spawn(self._on_report)),
                      await nc.subscribe("fleet.upload.*", cb=self._spawn(self._on_upload)),
                      await nc.subscribe("fleet.input.*", cb=self._spawn(self._on_input))]
        self._feeder = asyncio.create_task(self._feed(psub))
        logger.info("dispatcher serving {n} lease(s) on record", n=len(self._held))

    async def stop(self) -> None:
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feeder
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        if self._psub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._psub.unsubscribe()
        for task in list(self._tasks):
            task.cancel()
        # Leases stay on record: the next dispatcher picks them up.

    async def _load_leases(self) -> None:
        assert self._leases is not None
        try:
            keys = await self._leases.keys()
        except nats.errors.Error:  # nats-py: NoKeysError when empty
            keys = []
        for key in keys:
            try:
                entry = await self._leases.get(key)
                lease = decode_lease(entry.value or b"")
            except (KeyNotFoundError, ValueError) as exc:
                logger.warning("lease {key} unreadable ({error}); dropped", key=key,
                               error=str(exc))
                await self._forget(key)
                continue
            self._held[lease.agent_id] = _Held(lease, heard_at=self._mono())

    # -- work requests ---------------------------------------------------------------------

    async def _on_work(self, msg: Msg) -> None:
        agent_id = _agent_of(msg.subject)
        if agent_id is None or not msg.reply:
            return
        try:
            request = decode_work_request(msg.data) if msg.data else WorkRequest()
        except ValueError as exc:
            await self._reply(msg, WorkReply(error=f"unreadable work request: {exc}"))
            return
        if (old := self._waiting.pop(agent_id, None)) is not None:
            await self._reply(old.msg, WorkReply())  # superseded by this one
        if (held := self._held.get(agent_id)) is not None:
            # One job per agent: asking for another hands this one back, now.
            logger.warning("{agent} asked for work while holding {tenant}/{job_id}; that job "
                           "goes back to the queue", agent=agent_id, tenant=held.lease.tenant,
                           job_id=held.lease.job_id)
            try:
                await self._nc_publish(held.lease.ack_subject, b"-NAK")
            except nats.errors.Error as exc:  # it comes back after ack_wait instead
                logger.warning("hand-back failed: {error}", error=str(exc))
            await self._drop(agent_id)
        if request.wait_s <= 0:  # "I no longer want work": answered, nothing granted
            await self._reply(msg, WorkReply())
            return
        self._waiting[agent_id] = _Waiter(
            msg, agent_id, until=self._mono() + min(request.wait_s, _MAX_WAIT_S))
        self._wake.set()

    async def _feed(self, psub: JetStreamContext.PullSubscription) -> None:
        """Pull one job whenever an agent is waiting, and hand it to the longest waiter.
        Nothing here may end the loop: without it no job would ever start again."""
        while True:
            try:
                await self._feed_once(psub)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("dispatching failed; going on in 1 s")
                await asyncio.sleep(1.0)

    async def _feed_once(self, psub: JetStreamContext.PullSubscription) -> None:
        await self._expire_waiters()
        if not self._waiting:
            self._wake.clear()
            # Wake now and then anyway: the stale-lease sweep runs here.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._ack_wait_s)
            return
        first = min(w.until for w in self._waiting.values())
        try:
            msgs = await psub.fetch(1, timeout=max(0.2, min(2.0, first - self._mono())))
        except TimeoutError:
            return
        except nats.errors.Error as exc:
            logger.warning("job fetch failed, retrying: {error}", error=str(exc))
            await asyncio.sleep(1.0)
            return
        for job in msgs:
            try:
                await self._dispatch(job)
            except (nats.errors.Error, TimeoutError) as exc:
                # Not acked or granted: it comes back after ack_wait.
                logger.warning("dispatching {subject} failed: {error}",
                               subject=job.subject, error=str(exc) or type(exc).__name__)

    async def _expire_waiters(self) -> None:
        now = self._mono()
        for agent_id, waiter in list(self._waiting.items()):
            if waiter.until <= now:
                del self._waiting[agent_id]
                await self._reply(waiter.msg, WorkReply())
        # A holder silent this long lost its delivery long ago (the job ran elsewhere, or
        # the reaper ended it): its record goes.
        for agent_id, held in list(self._held.items()):
            if now - held.heard_at > _STALE_HOLDS * self._ack_wait_s:
                logger.info("lease of {agent} on {job_id} forgotten: silent for {s:.0f}s",
                            agent=agent_id, job_id=held.lease.job_id, s=now - held.heard_at)
                await self._drop(agent_id)

    async def _dispatch(self, job: Msg) -> None:
        assert self._states is not None
        try:
            tenant, operation, job_id = parse_job_subject(job.subject)
            validate_tenant(tenant)
            validate_job_id(job_id)
        except ValueError as exc:
            # Only the gateway writes JOBS, and it checks all three: loud, and dropped.
            logger.error("job on {subject} dropped: {error}", subject=job.subject,
                         error=str(exc))
            await job.term()
            return
        if (outcome := await self._states.terminal(tenant, job_id)) is not None:
            # Ended already (a resubmit, or a redelivery after the outcome was recorded).
            await ensure_announced(self._js, outcome, CONTROLLER_PUBLISHER)
            await job.ack_sync()
            return
        for agent_id, held in list(self._held.items()):  # an older delivery's holder
            if (held.lease.tenant, held.lease.job_id) == (tenant, job_id):
                logger.warning("job {tenant}/{job_id} came back from {agent}, which went "
                               "quiet; its lease is void", tenant=tenant, job_id=job_id,
                               agent=agent_id)
                await self._drop(agent_id)
        waiter = self._next_waiter()
        if waiter is None:  # everyone gave up while it was fetched: back to the queue
            await job.nak()
            return
        meta = job.metadata
        lease = Lease(agent_id=waiter.agent_id, tenant=tenant, operation=operation,
                      job_id=job_id, attempt=meta.num_delivered,
                      stream_seq=meta.sequence.stream, ack_subject=job.reply,
                      granted_at=self._clock(), inputs=_inputs_of(operation, job.data))
        assert self._leases is not None
        await self._leases.put(waiter.agent_id, encode(lease))
        self._held[waiter.agent_id] = _Held(lease, heard_at=self._mono())
        grant = Grant(tenant=tenant, operation=operation, job_id=job_id,
                      attempt=meta.num_delivered, max_deliver=self._max_deliver,
                      failures=await self._failures(tenant, job_id),
                      queued_at=meta.timestamp.timestamp(),
                      hold_every_s=self._ack_wait_s / 3,
                      body=job.data.decode("utf-8", errors="replace"))
        await self._reply(waiter.msg, WorkReply(grant=grant))
        logger.bind(tenant=tenant, job_id=job_id, agent_id=waiter.agent_id).info(
            "job {job_id} (attempt {n}) leased to {agent}", job_id=job_id,
            n=meta.num_delivered, agent=waiter.agent_id)

    def _next_waiter(self) -> _Waiter | None:
        now = self._mono()
        live = [w for w in self._waiting.values() if w.until > now]
        if not live:
            return None
        first = min(live, key=lambda w: w.until)
        del self._waiting[first.agent_id]
        return first

    async def _failures(self, tenant: str, job_id: str) -> int:
        """Retryable failures so far, counted from the job's stored ``retrying`` events."""
        try:
            info = await self._js.stream_info(
                EVENTS_STREAM, subjects_filter=event_subject(tenant, job_id, "retrying", "*"))
        except nats.errors.Error:
            return 0
        return sum((info.state.subjects or {}).values())

    # -- reports ---------------------------------------------------------------------------

    def _spawn(self, handler: Callable[[Msg, str], Awaitable[ReportReply | None]]
               ) -> Callable[[Msg], Awaitable[None]]:
        """Each agent's messages in order, different agents' at once: one slow JetStream
        call must not stall every agent's lease."""
        async def on_msg(msg: Msg) -> None:
            agent_id = _agent_of(msg.subject)
            if agent_id is None or not msg.reply:
                return

            async def run() -> None:
                async with self._locks.setdefault(agent_id, asyncio.Lock()):
                    try:
                        reply = await handler(msg, agent_id)
                    except (nats.errors.Error, TimeoutError) as exc:
                        reply = ReportReply(ok=False, code="unavailable",
                                            message=f"{type(exc).__name__}: {exc}")
                    except Exception as exc:  # a bug: the agent retries, the log says why
                        logger.exception("handling {subject} failed", subject=msg.subject)
                        reply = ReportReply(ok=False, code="unavailable",
                                            message=f"dispatcher error: {type(exc).__name__}")
                if reply is not None:  # None: the handler answered itself
                    await self._reply(msg, reply)
            task = asyncio.create_task(run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return on_msg

    async def _on_report(self, msg: Msg, agent_id: str) -> ReportReply:
        try:
            report = decode_report(msg.data)
        except ValueError as exc:
            logger.warning("unreadable report from {agent}: {error}", agent=agent_id,
                           error=str(exc))
            return ReportReply(ok=False, code="invalid", message=f"unreadable report: {exc}")
        held = self._holder(agent_id, report.tenant, report.job_id)
        if held is None:
            logger.warning("{agent} reported on {tenant}/{job_id}, which it does not hold; "
                           "refused", agent=agent_id, tenant=report.tenant,
                           job_id=report.job_id)
            return ReportReply(ok=False, code="not_holder",
                               message="this job is not leased to you (any more)")
        held.heard_at = self._mono()
        lease = held.lease
        if isinstance(report, Hold):
            await self._nc_publish(lease.ack_subject, b"+WPI")
            return ReportReply(ok=True)
        if isinstance(report, Release):
            await self._nc_publish(lease.ack_subject, b"-NAK")
            await self._drop(agent_id)
            return ReportReply(ok=True)
        event = _as_holder(report, lease)
        if isinstance(event, Progress):
            await self._nc_publish(lease.ack_subject, b"+WPI")
            # Bounded, so a holder cannot flood EVENTS and push other jobs' history out.
            if held.heard_at - held.progress_at >= _MIN_PROGRESS_S:
                held.progress_at = held.heard_at
                await self._publish(event)
            return ReportReply(ok=True)
        if isinstance(event, Started):
            if held.started:
                return ReportReply(ok=False, code="invalid", message="already started")
            held.started = True
            return await self._started(agent_id, event)
        if isinstance(event, Retrying):
            await self._publish(event)
            delay_ns = int(min(max(event.retry_in_s, 0.0), _MAX_RETRY_DELAY_S) * 1e9)
            await self._nc_publish(lease.ack_subject, b'-NAK {"delay": %d}' % delay_ns)
            await self._drop(agent_id)
            return ReportReply(ok=True)
        if isinstance(event, Succeeded):
            checked = await self._checked_output(held, event.output)
            if isinstance(checked, ReportReply):
                return checked
            event = msgspec.structs.replace(event, output=checked)
        assert isinstance(event, (Succeeded, Failed))
        return await self._finish(agent_id, event)

    async def _started(self, agent_id: str, event: Started) -> ReportReply:
        assert self._states is not None
        lease = self._held[agent_id].lease
        if (existing := await self._states.record_started(event)) is not None:
            await ensure_announced(self._js, existing, CONTROLLER_PUBLISHER)
            await self._ack(lease)
            await self._drop(agent_id)
            return ReportReply(ok=False, code="already_ended",
                               message=f"the job already {type(existing).__name__.lower()}")
        await self._publish(event)
        await self._nc_publish(lease.ack_subject, b"+WPI")
        return ReportReply(ok=True)

    async def _finish(self, agent_id: str, event: Succeeded | Failed) -> ReportReply:
        """Claim the job's outcome, announce it, then ack: a crash between them repeats an
        announcement (skipped when present), never loses one."""
        assert self._states is not None
        lease = self._held[agent_id].lease
        winner = await self._states.claim_terminal(event)
        if winner is None:
            await self._publish(event)
        elif winner == event:  # this report, sent again after its answer was lost
            await ensure_announced(self._js, event, lease.agent_id)
        else:
            logger.warning("{agent}'s outcome for {job_id} dropped: {other} ended it first",
                           agent=agent_id, job_id=event.job_id, other=winner.agent_id)
        if isinstance(event, Succeeded) or winner is not None:
            await self._ack(lease)
        else:
            await self._nc_publish(lease.ack_subject, b"+TERM")
        await self._drop(agent_id)
        return ReportReply(ok=True)

    async def _checked_output(self, held: _Held, claimed: OutputInfo) -> OutputInfo | ReportReply:
        """The result as stored here: committed, and described by what this dispatcher
        measured. A claim that disagrees is refused (the agent re-sends)."""
        upload, stored = held.upload, held.stored
        if upload is not None and upload.name == claimed.name:
            if (upload.size, upload.sha256_hex()) != (claimed.size_bytes, claimed.sha256):
                await upload.abort()
                held.upload = None
                return ReportReply(ok=False, code="upload_mismatch",
                                   message="the upload does not match the reported size and "
                                           "SHA-256: send it again")
            await upload.commit()
            held.upload = None
            stored = held.stored = msgspec.structs.replace(
                claimed, bucket=upload.bucket, name=upload.name, size_bytes=upload.size,
                sha256=upload.sha256_hex())
        if stored is None or (stored.name, stored.size_bytes, stored.sha256) != (
                claimed.name, claimed.size_bytes, claimed.sha256):
            return ReportReply(ok=False, code="upload_mismatch",
                               message="no upload of that name and content for this job: "
                                       "send it again")
        return stored

    # -- inputs ----------------------------------------------------------------------------

    async def _on_input(self, msg: Msg, agent_id: str) -> None:
        """An input of the held job, chunk by chunk: the only objects an agent can read."""
        try:
            request = decode_input_request(msg.data)
        except ValueError as exc:
            return await self._refuse(msg, f"invalid: unreadable input request: {exc}")
        held = self._holder(agent_id, request.tenant, request.job_id)
        if held is None:
            return await self._refuse(msg, "not_holder: this job is not leased to you")
        if request.name not in held.lease.inputs:
            logger.warning("{agent} asked for input {name!r}, which its job does not name; "
                           "refused", agent=agent_id, name=request.name)
            return await self._refuse(msg, f"not_an_input: the job you hold does not name "
                                           f"obj:{request.name}")
        held.heard_at = self._mono()
        bucket = inputs_bucket(request.tenant)
        reading = held.reading.get(request.name)
        try:
            if request.info or (request.index == 0 and
                                (reading is None or reading.position != 0)):
                if reading is not None:
                    await reading.close()
                info = await object_info(self._js, bucket, request.name)
                reading = held.reading[request.name] = _Reading(
                    info, iter_chunks(self._js, bucket, info))
                if request.info:
                    return await self._send(msg, b"", {
                        SIZE_HEADER: str(info.size or 0), SHA256_HEADER: digest_hex(info),
                        CHUNKS_HEADER: str(info.chunks or 0)})
            if reading is None or request.index != reading.position:
                return await self._refuse(msg, "out_of_order: ask for the chunks in order, "
                                               "from index 0")
            try:
                data = await anext(reading.chunks)
            except StopAsyncIteration:
                return await self._refuse(msg, f"missing: the object has no chunk "
                                               f"{request.index}")
            reading.position += 1
            if reading.position == (reading.info.chunks or 0):
                await reading.close()
                del held.reading[request.name]
        except ObjectMissing as exc:
            return await self._refuse(msg, f"missing: {exc}")
        except (nats.errors.Error, TimeoutError) as exc:
            held.reading.pop(request.name, None)
            return await self._refuse(msg, f"unavailable: {type(exc).__name__}: {exc}")
        return await self._send(msg, data, {})

    async def _refuse(self, msg: Msg, error: str) -> None:
        await self._send(msg, b"", {ERROR_HEADER: error})

    async def _send(self, msg: Msg, data: bytes, headers: dict[str, str]) -> None:
        assert self._nc is not None
        with contextlib.suppress(nats.errors.Error):
            await self._nc.publish(msg.reply, data, headers=headers)

    # -- uploads ---------------------------------------------------------------------------

    async def _on_upload(self, msg: Msg, agent_id: str) -> ReportReply:
        headers = msg.headers or {}
        tenant, _, job_id = headers.get(JOB_HEADER, "").partition(".")
        held = self._holder(agent_id, tenant, job_id)
        if held is None:
            return ReportReply(ok=False, code="not_holder",
                               message="this job is not leased to you (any more)")
        held.heard_at = self._mono()
        lease = held.lease
        name = headers.get(NAME_HEADER, "")
        head, _, file = name.rpartition("/")
        if head != f"{lease.job_id}/{lease.attempt}" or not _FILE_RE.match(file):
            return ReportReply(ok=False, code="invalid", message=(
                f"a result is named {lease.job_id}/{lease.attempt}/<file>, file from "
                "A-Z a-z 0-9 . _ - (at most 64)"))
        try:
            offset = int(headers.get(OFFSET_HEADER, ""))
        except ValueError:
            return ReportReply(ok=False, code="invalid", message="Vidfleet-Offset: not a number")
        if offset == 0:
            if held.upload is not None:
                await held.upload.abort()
            held.upload = ObjectWriter(self._js, results_bucket(lease.tenant), name)
        upload = held.upload
        if upload is None or upload.name != name or upload.size != offset:
            return ReportReply(ok=False, code="upload_mismatch", message=(
                "this chunk does not follow the upload on record: start over at offset 0"))
        try:
            await upload.append(msg.data)
        except StoreFull as exc:
            await upload.abort()
            held.upload = None
            return ReportReply(ok=False, code="results_quota_exceeded", message=str(exc))
        await self._nc_publish(lease.ack_subject, b"+WPI")
        return ReportReply(ok=True)

    # -- helpers ---------------------------------------------------------------------------

    def _holder(self, agent_id: str, tenant: str, job_id: str) -> _Held | None:
        held = self._held.get(agent_id)
        if held is None or (held.lease.tenant, held.lease.job_id) != (tenant, job_id):
            return None
        return held

    async def _drop(self, agent_id: str) -> None:
        held = self._held.pop(agent_id, None)
        if held is not None and held.upload is not None:
            await held.upload.abort()
        for reading in held.reading.values() if held is not None else ():
            await reading.close()
        await self._forget(agent_id)

    async def _forget(self, key: str) -> None:
        assert self._leases is not None
        with contextlib.suppress(KeyNotFoundError):
            await self._leases.delete(key)

    async def _ack(self, lease: Lease) -> None:
        await self._nc_request(lease.ack_subject, b"+ACK")

    async def _publish(self, event: Event) -> None:
        """Under the holder's id, without ``Nats-Msg-Id`` (one outcome per job is kept by
        the job state's compare-and-set, not by the stream's dedupe)."""
        kind = str(type(event).__struct_config__.tag)
        agent_id = getattr(event, "agent_id", CONTROLLER_PUBLISHER)
        await self._js.publish(event_subject(event.tenant, event.job_id, kind, agent_id),
                               encode_event(event))

    async def _nc_publish(self, subject: str, data: bytes) -> None:
        """An ack-family message (+WPI, -NAK, +TERM), flushed so it is not left buffered."""
        assert self._nc is not None
        await self._nc.publish(subject, data)
        await self._nc.flush(timeout=5)

    async def _nc_request(self, subject: str, data: bytes) -> None:
        """An ack the server confirms (as nats-py's ``ack_sync``)."""
        assert self._nc is not None
        await self._nc.request(subject, data, timeout=5.0)

    async def _reply(self, msg: Msg, reply: WorkReply | ReportReply) -> None:
        with contextlib.suppress(nats.errors.Error):
            await msg.respond(encode(reply))


def _inputs_of(operation: str, body: bytes) -> tuple[str, ...]:
    try:
        return object_inputs(decode_job(operation, body))
    except (LookupError, ValueError):  # the gateway checked it; an agent will fail it
        return ()


def _agent_of(subject: str) -> str | None:
    agent_id = subject.rsplit(".", 1)[-1]
    return agent_id if AGENT_ID_RE.match(agent_id) else None


def _as_holder(report: Report, lease: Lease) -> Event:
    """The event as the lease says it is: its agent, attempt, tenant and operation are the
    holder's, whatever the body claimed."""
    assert not isinstance(report, (Hold, Release))
    fields: dict[str, object] = {"agent_id": lease.agent_id, "attempt": lease.attempt,
                                 "tenant": lease.tenant}
    if isinstance(report, (Started, Succeeded, Failed)):
        fields["operation"] = lease.operation
    return msgspec.structs.replace(report, **fields)
