"""The async Python API: submit jobs, follow their events, fetch and download results.

    async with await Client.connect("nats://127.0.0.1:4222") as vf:
        video = await vf.upload_input("talk.mp4")
        receipt = await vf.submit(CaptionJob(video=video, srt=await vf.upload_input("t.srt")))
        async for event in vf.watch(receipt.job_id):
            ...
        done = await vf.result(receipt.job_id)        # Succeeded, Failed or Cancelled
        await vf.download(done.output, "talk.captioned.mp4")

Every client acts for one tenant: the one its credentials belong to (a tenant's creds file from
``vidfleet creds client``), or ``tenant=`` (default ``default``) for the fleet's own users and a
server without auth. Job ids are the tenant's own namespace. Submitting is idempotent by job id:
the gateway stores the job under its tenant and id, so a retried submit (a timeout, a second
click) runs the job once.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from loguru import logger
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from broker.connect import connect
from broker.creds import LiveCredentials
from broker.events import (
    TERMINAL_KINDS,
    Cancelled,
    Event,
    Failed,
    OutputInfo,
    Succeeded,
    event_from_msg,
)
from broker.fleet import FleetInstance, FleetSummary
from broker.jobs import JobRequest, decode_job, encode_job, object_ref, operation_of
from broker.objects import ObjectCorrupt, digest_hex, download, upload
from broker.queries import (
    JobsQuery,
    JobState,
    JobStatus,
    decode_job_status_reply,
    decode_jobs_reply,
)
from broker.queries import encode as encode_query
from broker.subjects import (
    DEFAULT_TENANT,
    FLEET_API_PREFIX,
    cancel_subject,
    event_subject,
    events_filter,
    inputs_bucket,
    parse_event_subject,
    results_bucket,
    submit_subject,
    tenant_events_stream,
    validate_job_id,
    validate_tenant,
)
from broker.submit import (
    CancelReply,
    CancelRequest,
    decode_cancel_reply,
    decode_submit_reply,
)
from broker.submit import encode as encode_request
from broker.webhooks import TenantHooks
from client.fleet_view import read_fleet
from client.webhook_settings import read_settings, write_settings

__all__ = ["CancelError", "Client", "JobNotFound", "QueryError", "SubmitError",
           "SubmitReceipt", "new_job_id"]

_GATEWAY_WAIT_S = 30.0  # how long a request waits for a controller (one restarting)


class SubmitError(RuntimeError):
    pass


class JobNotFound(LookupError):
    pass


class CancelError(RuntimeError):
    pass


class QueryError(RuntimeError):
    pass


_NO_CONTROLLER = "the vidfleet controller does not answer: is it running?"


@dataclass(frozen=True, slots=True)
class SubmitReceipt:
    job_id: str
    operation: str
    duplicate: bool  # True: this id was already submitted; nothing new will run
    stream_seq: int | None


def new_job_id() -> str:
    return "j" + time.strftime("%Y%m%d%H%M%S", time.gmtime()) + secrets.token_hex(6)


class Client:
    def __init__(self, nc: Nats, *, tenant: str = DEFAULT_TENANT,
                 api_prefix: str | None = None) -> None:
        """``api_prefix``: where this connection reaches the fleet's JetStream API
        (``$JS.FLEET.API`` from a tenant account; None: the account's own ``$JS.API``)."""
        self._nc = nc
        self.tenant = validate_tenant(tenant)
        self.is_tenant = api_prefix is not None  # a tenant account's user, not the fleet's
        self._events = tenant_events_stream(self.tenant)
        self._js = nc.jetstream(prefix=api_prefix) if api_prefix else nc.jetstream()

    @classmethod
    async def connect(cls, url: str, *, name: str = "vidfleet-client",
                      creds_file: str | Path | None = None, tenant: str | None = None,
                      **options: Any) -> Client:
        """``creds_file``: a .creds file for an operator-mode server. A tenant's (``vidfleet
        creds client NAME``) acts for that tenant; the fleet's own (admin) for ``tenant``."""
        credentials = None
        if creds_file:
            credentials = LiveCredentials.from_creds(Path(creds_file).read_text())
        own = credentials.tenant if credentials else None
        if own and tenant and tenant != own:
            raise ValueError(f"these credentials belong to tenant {own!r}, not {tenant!r}")
        # A client should fail fast when the server is unreachable, not retry forever.
        nc = await connect(url, name=name, max_reconnect_attempts=10, allow_reconnect=True,
                           credentials=credentials, **options)
        return cls(nc, tenant=own or tenant or DEFAULT_TENANT,
                   api_prefix=FLEET_API_PREFIX if own else None)

    async def close(self) -> None:
        if not self._nc.is_closed:  # the server may have closed it (revoked credentials)
            await self._nc.drain()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def upload_input(self, path: str | Path, name: str | None = None) -> str:
        """Upload a local file to the tenant's inputs bucket; returns its ``obj:<name>``."""
        path = Path(path)
        name = name or f"{secrets.token_hex(8)}/{re.sub(r'[^A-Za-z0-9._-]+', '_', path.name)}"
        if re.search(r"\s", name):
            raise ValueError(f"object name {name!r} has white space; a job cannot refer to it")
        await upload(self._js, inputs_bucket(self.tenant), name, path)
        return object_ref(name)

    async def submit(self, job: JobRequest, *, job_id: str | None = None) -> SubmitReceipt:
        """Queue ``job`` under ``job_id`` (a new id when None). Raises SubmitError when the
        gateway refuses it or none answers within 30 s. A receipt with ``duplicate=True``
        means the id was already submitted and nothing new will run: calling this twice
        never runs (and bills) twice.
        """
        job_id = validate_job_id(job_id or new_job_id())
        operation = operation_of(job)
        body = encode_job(job)
        try:  # the agent's own checks, before anything is sent
            decode_job(operation, body)
        except msgspec.ValidationError as exc:
            raise SubmitError(f"invalid {operation} job: {exc}") from None
        answer = await self._ask(submit_subject(self.tenant, operation, job_id), body,
                                 SubmitError, "no gateway answers submits: is the vidfleet "
                                 "controller running?", timeout_s=10)
        try:
            reply = decode_submit_reply(answer)
        except msgspec.DecodeError:
            raise SubmitError(f"the gateway's answer is unreadable: {answer[:80]!r}") \
                from None
        if not reply.ok:
            raise SubmitError(f"job {job_id} refused ({reply.code}): {reply.message}")
        return SubmitReceipt(job_id, operation, duplicate=reply.duplicate,
                             stream_seq=reply.stream_seq)

    async def submit_many(self, jobs: Iterable[tuple[str | None, JobRequest]], *,
                          concurrency: int = 64) -> list[SubmitReceipt | SubmitError]:
        """Submit many jobs with ``concurrency`` requests in flight: a receipt, or the error,
        for each (job id, job) in order (None: a new id). One refusal does not stop the
        rest."""
        gate = asyncio.Semaphore(concurrency)

        async def one(job_id: str | None, job: JobRequest) -> SubmitReceipt | SubmitError:
            async with gate:
                try:
                    return await self.submit(job, job_id=job_id)
                except SubmitError as exc:
                    return exc

        return list(await asyncio.gather(*(one(job_id, job) for job_id, job in jobs)))

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

    async def outcome(self, job_id: str) -> Succeeded | Failed | Cancelled | None:
        """The job's outcome if it has one now (no waiting)."""
        return await self._terminal_now(job_id)

    async def cancel(self, job_id: str, *, reason: str = "") -> CancelReply:
        """Cancel a job of this tenant: a queued job never starts; a running one is stopped
        within seconds and its partial output deleted. Exactly one outcome is ever recorded,
        so a cancel that races the job's own end either wins (``ok``; the job's outcome is a
        ``Cancelled`` event) or tells which outcome came first (``code`` ``already_ended``,
        ``state`` succeeded, failed or cancelled).

        Raises JobNotFound for an id this tenant never submitted, CancelError when no
        controller answers or it could not act (try again).
        """
        answer = await self._ask(cancel_subject(self.tenant, job_id),
                                 encode_request(CancelRequest(reason=reason)),
                                 CancelError, _NO_CONTROLLER)
        try:
            reply = decode_cancel_reply(answer)
        except msgspec.DecodeError:
            raise CancelError(f"the controller's answer is unreadable: {answer[:80]!r}") \
                from None
        if reply.code == "not_found":
            raise JobNotFound(reply.message)
        if not reply.ok and reply.code != "already_ended":
            raise CancelError(f"job {job_id} not cancelled ({reply.code}): {reply.message}")
        return reply

    async def status(self, job_id: str) -> JobStatus:
        """Where the job is now: queued (with its place in the queue), running (agent,
        attempt, progress, cost so far), waiting to run again, or its outcome. Raises
        JobNotFound for an id this tenant never submitted (or whose history expired)."""
        reply = decode_job_status_reply(await self._ask(
            f"query.{self.tenant}.job.{validate_job_id(job_id)}", b"", QueryError,
            _NO_CONTROLLER))
        if reply.code == "not_found":
            raise JobNotFound(reply.message)
        if not reply.ok or reply.status is None:
            raise QueryError(f"no status for job {job_id} ({reply.code}): {reply.message}")
        return reply.status

    async def jobs(self, *, state: JobState | None = None, since_s: float = 86400.0,
                   limit: int = 50) -> tuple[list[JobStatus], bool]:
        """This tenant's jobs queued in the last ``since_s`` seconds (a day at most), newest
        first, only those in ``state`` if given; and whether more matched than were
        returned."""
        reply = decode_jobs_reply(await self._ask(
            f"query.{self.tenant}.jobs",
            encode_query(JobsQuery(state=state, since_s=since_s, limit=limit)),
            QueryError, _NO_CONTROLLER))
        if not reply.ok:
            raise QueryError(f"no job list ({reply.code}): {reply.message}")
        return reply.jobs, reply.truncated

    async def _ask(self, subject: str, body: bytes, error: type[Exception], unanswered: str,
                   *, timeout_s: float = 30.0) -> bytes:
        """A request to the controller, asked again while none answers (it is restarting)
        for 30 s; then ``error(unanswered)`` is raised."""
        deadline = time.monotonic() + _GATEWAY_WAIT_S
        while True:
            try:
                return (await self._nc.request(subject, body, timeout=timeout_s)).data
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                if time.monotonic() > deadline:
                    raise error(unanswered) from None
                await asyncio.sleep(0.5)

    async def watch(self, job_id: str, *, timeout_s: float | None = None) -> AsyncIterator[Event]:
        """Every event of the job from its start, then live ones, ending after the terminal one.

        Raises JobNotFound for an id nobody submitted, TimeoutError if the job has not ended
        within ``timeout_s`` (None: wait forever). Events of kinds this version does not know,
        and malformed ones, are skipped.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        await self._require_job(job_id)
        # A named pull consumer on the tenant's own events stream, filtered to the job.
        consumer = f"watch-{secrets.token_hex(8)}"
        await self._js.add_consumer(self._events, ConsumerConfig(
            name=consumer, filter_subject=events_filter(self.tenant, job_id),
            ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, mem_storage=True,
            inactive_threshold=60.0))
        sub = await self._js.pull_subscribe_bind(consumer=consumer, stream=self._events)
        try:
            while True:
                wait_s = 5.0 if deadline is None else deadline - time.monotonic()
                if wait_s <= 0:
                    raise TimeoutError(f"job {job_id} did not finish within {timeout_s}s")
                try:
                    msgs = await sub.fetch(16, timeout=min(wait_s, 5.0))
                except (nats.errors.TimeoutError, TimeoutError):
                    continue
                for msg in msgs:
                    event = _event(msg.subject, msg.headers, msg.data)
                    if event is not None:
                        yield event
                    if parse_event_subject(msg.subject)[2] in TERMINAL_KINDS:
                        return
        finally:
            with contextlib.suppress(nats.errors.Error):  # closed or draining already
                await sub.unsubscribe()
                # At once, not at its inactive threshold: a tenant may hold only so many.
                await self._js.delete_consumer(self._events, consumer)

    async def _require_job(self, job_id: str) -> None:
        """Raise JobNotFound unless the job has events. (The queued event reaches the
        tenant's events stream a moment after the gateway stored the job, so a miss is looked
        at again for 2 s.)"""
        subject = event_subject(self.tenant, validate_job_id(job_id), "*", "*")
        deadline = time.monotonic() + 2.0
        while True:
            try:
                await self._js.get_last_msg(self._events, subject, direct=True)
                return
            except nats.js.errors.NotFoundError:
                if time.monotonic() > deadline:
                    raise JobNotFound(f"no job with id {job_id!r} (never submitted, or its "
                                      "events expired)") from None
                await asyncio.sleep(0.1)

    async def result(self, job_id: str, *,
                     timeout_s: float | None = None) -> Succeeded | Failed | Cancelled:
        """The job's terminal event, waiting for it if the job is still running.

        Does not replay the job's history: it listens for live terminal events first, then
        looks up the last stored one, so an event published in between is never missed.
        Raises JobNotFound for an unknown id, TimeoutError after ``timeout_s`` (None: forever).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        await self._require_job(job_id)
        live = await self._nc.subscribe(event_subject(self.tenant, job_id, "*", "*"))
        copying = 0  # polls left for the stored copy of a terminal event seen live
        try:
            while True:
                stored = await self._terminal_now(job_id)
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

    async def _terminal_now(self, job_id: str) -> Succeeded | Failed | Cancelled | None:
        for kind in ("succeeded", "failed", "cancelled"):
            try:
                msg = await self._js.get_last_msg(
                    self._events, event_subject(self.tenant, job_id, kind, "*"), direct=True)
            except nats.js.errors.NotFoundError:
                continue
            event = _event(msg.subject or "", msg.headers, msg.data or b"")
            if isinstance(event, (Succeeded, Failed, Cancelled)):
                return event
        return None

    async def download(self, output: OutputInfo, dest: str | Path) -> Path:
        """Download a result to ``dest`` (a file path, or a directory to put it in). What is
        written is checked against the outcome's own SHA-256 (and the stored object's) before
        this returns; on a mismatch the file is deleted and ObjectCorrupt raised."""
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / output.name.replace("/", "-")
        if output.bucket != results_bucket(self.tenant):
            raise ObjectCorrupt(f"the result names bucket {output.bucket!r}, not this "
                                f"tenant's {results_bucket(self.tenant)!r}")
        info = await download(self._js, output.bucket, output.name, dest)
        if digest_hex(info) != output.sha256:
            dest.unlink(missing_ok=True)
            raise ObjectCorrupt(f"result {output.name!r} is not the file the job's outcome "
                                "names (SHA-256 differs)")
        return dest

    async def webhook_settings(self, tenant: str) -> TenantHooks:
        """A tenant's webhook URL and secret (the fleet's own users only)."""
        return await read_settings(self._js, tenant)

    async def set_webhook_settings(self, tenant: str, *, url: str | None = None,
                                   rotate: bool = False) -> tuple[TenantHooks, bool]:
        """Set a tenant's default webhook URL (None: keep; "": none), making its signing
        secret if it has none, or anew with ``rotate`` (the old one stops at once). Returns
        the settings and whether the secret is new (the fleet's own users only)."""
        return await write_settings(self._js, tenant, url=url, rotate=rotate)

    async def fleet(self) -> tuple[FleetSummary | None, list[FleetInstance]]:
        """The controller's last summary and its machines (the fleet's own users only)."""
        return await read_fleet(self._js)


def _event(subject: str, headers: dict[str, str] | None, data: bytes) -> Event | None:
    """One stored or live event, or None (logged) when it cannot be read: a reader never dies
    of what someone else published."""
    try:
        return event_from_msg(subject, headers, data)
    except ValueError as exc:
        logger.warning("unreadable event on {subject} skipped: {error}", subject=subject,
                       error=str(exc))
        return None
