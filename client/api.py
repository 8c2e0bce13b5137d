"""The async Python API: submit jobs, follow their events, fetch and download results.

    async with await Client.connect("nats://127.0.0.1:4222") as vf:
        video = await vf.upload_input("talk.mp4")
        receipt = await vf.submit(CaptionJob(video=video, srt=await vf.upload_input("t.srt")))
        async for event in vf.watch(receipt.job_id):
            ...
        done = await vf.result(receipt.job_id)        # Succeeded or Failed
        await vf.download(done.output, "talk.captioned.mp4")

Submitting is idempotent by job id: the id is the message's ``Nats-Msg-Id`` and its subject's
last token, so a retried submit (a timeout, a second click) runs the job once.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as Nats
from nats.js.api import DeliverPolicy
from nats.js.errors import APIError

from broker.connect import connect
from broker.creds import LiveCredentials
from broker.events import TERMINAL_KINDS, Event, Failed, OutputInfo, Succeeded, event_from_msg
from broker.fleet import (
    SUMMARY_KEY,
    FleetInstance,
    FleetSummary,
    decode_fleet_instance,
    decode_fleet_summary,
)
from broker.jobs import JobRequest, decode_job, encode_job, object_ref, operation_of
from broker.objects import download, upload
from broker.subjects import (
    EVENTS_STREAM,
    FLEET_BUCKET,
    INPUTS_BUCKET,
    JOBS_STREAM,
    client_inbox_prefix,
    events_filter,
    job_subject,
    parse_event_subject,
    validate_job_id,
)

__all__ = ["Client", "JobNotFound", "SubmitError", "SubmitReceipt", "new_job_id"]

_LIMIT_REACHED = 10077  # "maximum messages (per subject) exceeded"


class SubmitError(RuntimeError):
    pass


class JobNotFound(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class SubmitReceipt:
    job_id: str
    operation: str
    duplicate: bool  # True: this id was already submitted; nothing new will run
    stream_seq: int | None


def new_job_id() -> str:
    return "j" + time.strftime("%Y%m%d%H%M%S", time.gmtime()) + secrets.token_hex(6)


class Client:
    def __init__(self, nc: Nats) -> None:
        self._nc = nc
        self._js = nc.jetstream()

    @classmethod
    async def connect(cls, url: str, *, name: str = "vidfleet-client",
                      creds_file: str | Path | None = None, **options: Any) -> Client:
        """``creds_file``: a .creds file for an operator-mode server (``vidfleet creds
        client NAME`` writes one); replies then come on the private inbox ``_INBOX_C.<NAME>``,
        the only one such credentials may read."""
        credentials = None
        if creds_file:
            credentials = LiveCredentials.from_creds(Path(creds_file).read_text())
            options.setdefault("inbox_prefix", client_inbox_prefix(credentials.name))
        # A client should fail fast when the server is unreachable, not retry forever.
        return cls(await connect(url, name=name, max_reconnect_attempts=10,
                                 allow_reconnect=True, credentials=credentials, **options))

    async def close(self) -> None:
        if not self._nc.is_closed:  # the server may have closed it (revoked credentials)
            await self._nc.drain()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def upload_input(self, path: str | Path, name: str | None = None) -> str:
        """Upload a local file to the inputs bucket; returns the ``obj:<name>`` reference."""
        path = Path(path)
        name = name or f"{secrets.token_hex(8)}/{re.sub(r'[^A-Za-z0-9._-]+', '_', path.name)}"
        if re.search(r"\s", name):
            raise ValueError(f"object name {name!r} has white space; a job cannot refer to it")
        await upload(self._js, INPUTS_BUCKET, name, path)
        return object_ref(name)

    async def submit(self, job: JobRequest, *, job_id: str | None = None) -> SubmitReceipt:
        """Queue ``job`` under ``job_id`` (a new id when None). Raises SubmitError when the
        queue refuses it. A receipt with ``duplicate=True`` means the id was already
        submitted and nothing new will run: calling this twice never runs (and bills) twice.
        """
        job_id = validate_job_id(job_id or new_job_id())
        operation = operation_of(job)
        subject = job_subject(operation, job_id)
        body = encode_job(job)
        try:  # the agent's own checks, before anything is queued
            decode_job(operation, body)
        except msgspec.ValidationError as exc:
            raise SubmitError(f"invalid {operation} job: {exc}") from None
        try:
            ack = await self._js.publish(subject, body,
                                         headers={"Nats-Msg-Id": job_id})
        except APIError as exc:
            # 10077 is both "this job id is still queued" (per subject) and "the queue is
            # full"; mistaking the second for the first would drop a job silently.
            if exc.err_code == _LIMIT_REACHED and "per subject" in (exc.description or ""):
                return SubmitReceipt(job_id, operation, duplicate=True, stream_seq=None)
            raise SubmitError(f"the server refused job {job_id}: {exc.description}") from None
        except nats.errors.NoRespondersError:
            raise SubmitError("no JOBS stream answers: is the vidfleet stack running?") from None
        return SubmitReceipt(job_id, operation, duplicate=bool(ack.duplicate), stream_seq=ack.seq)

    async def watch(self, job_id: str, *, timeout_s: float | None = None) -> AsyncIterator[Event]:
        """Every event of the job from its start, then live ones, ending after the terminal one.

        Raises JobNotFound for an id nobody submitted, TimeoutError if the job has not ended
        within ``timeout_s`` (None: wait forever). Events of kinds this version does not know
        are skipped.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        await self._require_job(job_id)
        sub = await self._js.subscribe(events_filter(job_id), stream=EVENTS_STREAM,
                                       ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        try:
            while True:
                wait_s = 5.0 if deadline is None else deadline - time.monotonic()
                if wait_s <= 0:
                    raise TimeoutError(f"job {job_id} did not finish within {timeout_s}s")
                try:
                    msg = await sub.next_msg(timeout=min(wait_s, 5.0))
                except nats.errors.TimeoutError:
                    continue
                event = event_from_msg(msg.subject, msg.headers, msg.data)
                if event is not None:
                    yield event
                if parse_event_subject(msg.subject)[1] in TERMINAL_KINDS:
                    return
        finally:
            with contextlib.suppress(nats.errors.Error):  # closed or draining already
                await sub.unsubscribe()

    async def _require_job(self, job_id: str) -> None:
        """Raise JobNotFound unless the job has events or is in the queue. (The queued event
        reaches EVENTS a moment after the job is stored, so both places are checked.)"""
        for stream, subject in ((EVENTS_STREAM, f"events.{validate_job_id(job_id)}.*.*"),
                                (JOBS_STREAM, f"jobs.*.{job_id}")):
            try:
                await self._js.get_last_msg(stream, subject)
                return
            except nats.js.errors.NotFoundError:
                continue
        raise JobNotFound(f"no job with id {job_id!r} (never submitted, or its events expired)")

    async def result(self, job_id: str, *, timeout_s: float | None = None) -> Succeeded | Failed:
        """The job's terminal event, waiting for it if the job is still running.

        Does not replay the job's history: it listens for live terminal events first, then
        looks up the last stored one, so an event published in between is never missed.
        Raises JobNotFound for an unknown id, TimeoutError after ``timeout_s`` (None: forever).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        await self._require_job(job_id)
        live = await self._nc.subscribe(f"events.{validate_job_id(job_id)}.*.*")
        try:
            while True:
                stored = await self._terminal_now(job_id)
                if stored is not None:
                    return stored
                # Re-check the store now and then: a reconnect can drop a live message.
                wait_s = 5.0 if deadline is None else min(5.0, deadline - time.monotonic())
                if wait_s <= 0:
                    raise TimeoutError(f"job {job_id} did not finish within {timeout_s}s")
                with contextlib.suppress(nats.errors.TimeoutError):
                    while True:
                        msg = await live.next_msg(timeout=wait_s)
                        if parse_event_subject(msg.subject)[1] in TERMINAL_KINDS:
                            break
        finally:
            with contextlib.suppress(nats.errors.Error):
                await live.unsubscribe()

    async def _terminal_now(self, job_id: str) -> Succeeded | Failed | None:
        for kind in ("succeeded", "failed"):
            try:
                msg = await self._js.get_last_msg(EVENTS_STREAM, f"events.{job_id}.{kind}.*")
            except nats.js.errors.NotFoundError:
                continue
            event = event_from_msg(msg.subject or "", msg.headers, msg.data or b"")
            if isinstance(event, (Succeeded, Failed)):
                return event
        return None

    async def download(self, output: OutputInfo, dest: str | Path) -> Path:
        """Download a result to ``dest`` (a file path, or a directory to put it in); the
        SHA-256 digest is verified before this returns."""
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / output.name.replace("/", "-")
        await download(self._js, output.bucket, output.name, dest)
        return dest


    async def fleet(self) -> tuple[FleetSummary | None, list[FleetInstance]]:
        """The controller's last summary and its machines, from the fleet KV (empty before a
        controller has run)."""
        try:
            kv = await self._js.key_value(FLEET_BUCKET)
        except nats.js.errors.NotFoundError:
            return None, []
        summary, machines = None, []
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            return None, []
        for key in keys:
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue
            if not entry.value:
                continue
            if key == SUMMARY_KEY:
                summary = decode_fleet_summary(entry.value)
            elif key.startswith("instances."):
                machines.append(decode_fleet_instance(entry.value))
        return summary, sorted(machines, key=lambda m: m.launched_at)
