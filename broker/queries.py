"""A tenant's questions about its jobs, answered by the controller: where one job is now, and
which jobs it ran recently. The job state, the leases and the queue are the fleet's (no tenant
reads them), so the controller reads them for the asker.

    query.<tenant>.job.<job_id>   request: empty. Reply: JobStatusReply
    query.<tenant>.jobs           request: JobsQuery (or empty). Reply: JobsReply

The tenant token is the server's word (each tenant account imports only ``query.<its
tenant>.>``), so a tenant learns only about its own jobs.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct

from broker.events import JobError, OutputInfo
from broker.webhooks import WebhookAttempt

__all__ = ["JOB_STATES", "JobState", "JobStatus", "JobStatusReply", "JobsQuery", "JobsReply",
           "decode_job_status_reply", "decode_jobs_query", "decode_jobs_reply", "encode"]

JobState = Literal["queued", "running", "waiting", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[str, ...] = ("queued", "running", "waiting", "succeeded", "failed",
                               "cancelled")


class JobStatus(Struct, frozen=True, kw_only=True):
    """Where a job is. ``queued``: never started; ``position`` is its place in the queue (1:
    handed out next; None once it has been handed out and came back). ``running``: an
    attempt holds it (``agent_id``, ``attempt``, ``percent`` from its last progress event).
    ``waiting``: an attempt ended without an outcome (a retry delay, or its machine was lost)
    and it is queued again. Then its outcome: ``succeeded`` (``output``), ``failed``
    (``error``) or ``cancelled``. ``cost_usd``: the machine time charged so far, all
    attempts (a running one's until now; the outcome's figure once it ended)."""

    job_id: str
    state: JobState
    operation: str = ""
    queued_at: float | None = None  # unix seconds the job was stored
    started_at: float | None = None  # the current (or last) attempt's start
    ended_at: float | None = None
    attempt: int = 0
    agent_id: str = ""
    encoder: str = ""
    percent: float | None = None
    position: int | None = None
    cost_usd: float = 0.0
    output: OutputInfo | None = None
    error: JobError | None = None
    reason: str = ""  # a cancel's reason
    dead_letter: bool = False  # failed, and kept: deadletters.<tenant>.retry.<job_id> reruns it
    webhooks: list[WebhookAttempt] = []  # every delivery attempt of its outcome, oldest first


class JobStatusReply(Struct, frozen=True, kw_only=True):
    """``ok`` with ``status``; or ``code`` ``not_found``, ``invalid_job_id`` or
    ``unavailable`` (try again), and a message."""

    ok: bool
    status: JobStatus | None = None
    code: str = ""
    message: str = ""


class JobsQuery(Struct, frozen=True, kw_only=True):
    """The tenant's jobs queued in the last ``since_s`` seconds (at most a day), newest first,
    at most ``limit`` (1-500), only those in ``state`` when it is given."""

    state: JobState | None = None
    since_s: float = 86400.0
    limit: int = 50


class JobsReply(Struct, frozen=True, kw_only=True):
    """``truncated``: more jobs matched than ``limit``, or the window held more jobs than
    are looked at (the 2,000 newest)."""

    ok: bool
    jobs: list[JobStatus] = []
    truncated: bool = False
    code: str = ""
    message: str = ""


_ENCODER = msgspec.json.Encoder()
_STATUS_REPLY = msgspec.json.Decoder(JobStatusReply)
_JOBS_QUERY = msgspec.json.Decoder(JobsQuery)
_JOBS_REPLY = msgspec.json.Decoder(JobsReply)


def encode(message: Struct) -> bytes:
    return _ENCODER.encode(message)


def decode_job_status_reply(data: bytes) -> JobStatusReply:
    return _STATUS_REPLY.decode(data)


def decode_jobs_query(data: bytes) -> JobsQuery:
    """Raises ValueError on anything malformed (an empty body is the default query)."""
    return _JOBS_QUERY.decode(data) if data.strip() else JobsQuery()


def decode_jobs_reply(data: bytes) -> JobsReply:
    return _JOBS_REPLY.decode(data)
