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
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as Nats

from broker.connect import connect
from broker.creds import LiveCredentials
from broker.events import (
    OutputInfo,
)
from broker.fleet import FleetInstance, FleetSummary
from broker.jobs import JobRequest, decode_job, encode_job, operation_of
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
    submit_subject,
    validate_job_id,
)
from broker.submit import (
    CancelReply,
    CancelRequest,
    decode_cancel_reply,
    decode_submit_reply,
)
from broker.submit import encode as encode_request
from broker.webhooks import TenantHooks
from client.dead_letters import DeadLetterError, DeadLetters
from client.files import download_result, upload_input
from client.fleet_view import read_fleet
from client.job_events import JobEvents, JobNotFound
from client.webhook_settings import read_settings, write_settings

__all__ = ["CancelError", "Client", "JobNotFound", "QueryError", "SubmitError",
           "SubmitReceipt", "new_job_id"]

_GATEWAY_WAIT_S = 30.0  # how long a request waits for a controller (one restarting)
_OUTAGE_RECONNECTS = 240  # tries at 0.5 s: a connected client waits out 2 min of outage


class SubmitError(RuntimeError):
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
    cached: bool = False  # True: answered from the result cache; it has succeeded already


def new_job_id() -> str:
    return "j" + time.strftime("%Y%m%d%H%M%S", time.gmtime()) + secrets.token_hex(6)


class Client(JobEvents):
    """A tenant's client: following its jobs (client/job_events.py), and submitting,
    cancelling, asking about them, and moving their files. ``dead_letters``: its jobs that
    failed for good (client/dead_letters.py)."""

    def __init__(self, nc: Nats, *, tenant: str = DEFAULT_TENANT,
                 api_prefix: str | None = None) -> None:
        super().__init__(nc, tenant=tenant, api_prefix=api_prefix)

        async def ask(subject: str, body: bytes) -> bytes:
            return await self._ask(subject, body, DeadLetterError, _NO_CONTROLLER)
        self.dead_letters = DeadLetters(ask, self.tenant)

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
        # A client fails fast when the server is unreachable at first (10 tries, 5 s), then
        # rides out an outage (a broker restart) for two minutes before it gives up: nats-py
        # reads this option at every reconnect (2.16). A waiting CLI must not exit 1 for a
        # job that then succeeds.
        nc = await connect(url, name=name, max_reconnect_attempts=10, allow_reconnect=True,
                           credentials=credentials, **options)
        nc.options["max_reconnect_attempts"] = _OUTAGE_RECONNECTS
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
        return await upload_input(self._js, self.tenant, path, name)

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
        deadline = time.monotonic() + 30.0  # "unavailable" (an election) retried: safe by id
        while True:
            answer = await self._ask(submit_subject(self.tenant, operation, job_id), body,
                                     SubmitError, "no gateway answers submits: is the "
                                     "vidfleet controller running?", timeout_s=10)
            try:
                reply = decode_submit_reply(answer)
            except msgspec.DecodeError:
                raise SubmitError(f"unreadable gateway answer: {answer[:80]!r}") from None
            if reply.ok or reply.code != "unavailable" or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        if not reply.ok:
            raise SubmitError(f"job {job_id} refused ({reply.code}): {reply.message}")
        return SubmitReceipt(job_id, operation, duplicate=reply.duplicate,
                             stream_seq=reply.stream_seq, cached=reply.cached)

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

    async def download(self, output: OutputInfo, dest: str | Path) -> Path:
        """Download a result to ``dest`` (a file or a directory), checked against the
        outcome's SHA-256 (client/files.py); ObjectCorrupt on a mismatch."""
        return await download_result(self._js, self.tenant, output, dest)

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
