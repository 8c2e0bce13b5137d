"""What happens to a job, as events on ``events.<tenant>.<job_id>.<kind>.<publisher>``.

Every body is JSON with a ``kind`` tag equal to the subject's kind token. The one exception is
``queued``: the server itself republishes each stored job as a headers-only message (empty
body), so a job published by any NATS client gets a queued event without our code running;
``event_from_msg`` turns those headers into a ``Queued`` Struct.

Order of a job's events: queued, then per attempt started, progress... and, when the attempt
hit trouble that is not the job's fault, retrying; finally exactly one of succeeded, failed or
cancelled for the job. A failed job run again from its dead letter gets ``requeued``, then the
same sequence again: the outcome that counts is the last one after the last ``requeued``.
Fields may only be added with defaults; readers ignore unknown fields.
"""

from __future__ import annotations

from datetime import datetime

import msgspec
from msgspec import Struct

from broker.subjects import parse_event_subject, parse_job_subject

__all__ = [
    "KINDS",
    "TERMINAL_KINDS",
    "Cancelled",
    "Event",
    "Failed",
    "JobError",
    "OutputInfo",
    "Progress",
    "Queued",
    "Requeued",
    "Retrying",
    "Started",
    "Succeeded",
    "Timings",
    "decode_event",
    "encode_event",
    "event_from_msg",
]

TERMINAL_KINDS = frozenset({"succeeded", "failed", "cancelled"})
KINDS = frozenset({"queued", "started", "progress", "retrying", "succeeded", "failed",
                   "cancelled", "requeued"})


class _Event(Struct, frozen=True, kw_only=True, tag_field="kind"):
    job_id: str
    at: float  # unix seconds when the publisher created the event
    tenant: str = ""  # whose job (ids are unique per tenant); equals the subject's token


class Queued(_Event, frozen=True, kw_only=True, tag="queued"):
    """Stored in JOBS (made by the server from the stored job's headers). ``stream_seq`` 0:
    answered from the result cache by the gateway, never stored."""

    operation: str
    stream_seq: int


class Started(_Event, frozen=True, kw_only=True, tag="started"):
    operation: str
    agent_id: str
    attempt: int  # 1 for the first delivery; a redelivered job starts again with attempt + 1
    encoder: str  # the video encoder this attempt uses, e.g. "h264_nvenc" or "libx264"
    build: str = ""  # the agent's build (FFmpeg, encoders, fonts, our code): gpu_agent/build.py


class Progress(_Event, frozen=True, kw_only=True, tag="progress"):
    agent_id: str
    attempt: int
    percent: float  # 0..100 of the output's expected duration
    media_time_s: float  # output time encoded so far
    speed: float | None = None  # media seconds per wall second, when FFmpeg reports it


class OutputInfo(Struct, frozen=True, kw_only=True):
    bucket: str
    name: str  # unique per job and attempt: <job_id>/<attempt>/<file>
    size_bytes: int
    sha256: str  # hex digest of the whole file
    duration_s: float
    width: int
    height: int
    video_codec: str
    container: str


class Timings(Struct, frozen=True, kw_only=True):
    queue_wait_s: float  # from the job's storage in JOBS to this attempt's start
    fetch_s: float  # inputs into the job directory
    validate_s: float  # ffprobe of the inputs; runs beside the start of the encode
    encode_s: float  # FFmpeg, from its start (with validation alongside) to its exit
    upload_s: float  # the output into the results bucket
    total_s: float  # this attempt, start to result


class Succeeded(_Event, frozen=True, kw_only=True, tag="succeeded"):
    operation: str
    agent_id: str
    attempt: int
    encoder: str
    output: OutputInfo
    timings: Timings
    # What the whole job cost: the machine time of every attempt (from the lease to its end:
    # the outcome, a retry, a hand-back, or the last word of a holder that vanished), each at
    # its machine's price; price_per_hour is this attempt's machine's (0 on local agents).
    price_per_hour: float = 0.0
    cost_usd: float = 0.0
    build: str = ""  # the agent build that made the result
    # Served from the result cache (broker/result_cache.py): the result of job cached_from,
    # at no cost; no machine ran this job (attempt 0, agent_id "controller").
    cached: bool = False
    cached_from: str = ""


class JobError(Struct, frozen=True, kw_only=True):
    code: str  # stable machine-readable reason, e.g. "invalid_input", "unknown_operation"
    message: str  # what went wrong and what to do about it, for a person
    # The last lines FFmpeg wrote, when it was FFmpeg that failed: scrubbed of URLs' secrets
    # and control characters, at most 4 KiB (broker/dead_letters.py scrub_log_tail).
    stderr_tail: str = ""


class Retrying(_Event, frozen=True, kw_only=True, tag="retrying"):
    """An attempt hit trouble that is not the job's fault; another attempt follows."""

    agent_id: str
    attempt: int
    error: JobError
    retry_in_s: float  # the earliest the next attempt can start
    failures: int  # retryable failures of this job so far, this one included


class Failed(_Event, frozen=True, kw_only=True, tag="failed"):
    agent_id: str
    attempt: int
    error: JobError
    operation: str = ""
    encoder: str = ""
    # What the whole job cost: every attempt's machine time (see Succeeded).
    price_per_hour: float = 0.0
    cost_usd: float = 0.0


class Cancelled(_Event, frozen=True, kw_only=True, tag="cancelled"):
    """The tenant cancelled the job (published by the controller, which claimed it): a queued
    job never starts; a running one is stopped and its partial output deleted."""

    reason: str = ""  # what the tenant gave, if anything
    operation: str = ""
    # The attempt that was running when the cancel came (none: "" and 0) and its machine's
    # price; what the whole job cost (every attempt's machine time, the running one's until
    # the cancel: see Succeeded).
    agent_id: str = ""
    attempt: int = 0
    price_per_hour: float = 0.0
    cost_usd: float = 0.0


class Requeued(_Event, frozen=True, kw_only=True, tag="requeued"):
    """The tenant ran a failed job again (a dead letter's retry, published by the
    controller). The outcome before it is history: a queued event follows, and attempts
    numbered from ``attempts_before + 1``, and in time one new outcome."""

    operation: str = ""
    attempts_before: int = 0


Event = Queued | Started | Progress | Retrying | Succeeded | Failed | Cancelled | Requeued

_DECODER = msgspec.json.Decoder(Event)
_ENCODER = msgspec.json.Encoder()


def encode_event(event: Event) -> bytes:
    return _ENCODER.encode(event)


def decode_event(data: bytes) -> Event:
    return _DECODER.decode(data)


def _timestamp(value: str) -> float:
    # The server writes RFC 3339 with nanoseconds; Python parses at most microseconds.
    head, _, frac = value.rstrip("Z").partition(".")
    stamp = f"{head}.{(frac + '000000')[:6]}+00:00" if frac else f"{head}+00:00"
    return datetime.fromisoformat(stamp).timestamp()


def event_from_msg(subject: str, headers: dict[str, str] | None, data: bytes) -> Event | None:
    """Decode one message of the EVENTS stream, including the server-made queued event.

    Returns None for a kind this version does not know, so old readers survive new writers.
    Raises ValueError (msgspec's errors are ValueErrors) for a malformed message: callers
    that read what others publish log and skip it.
    """
    tenant, job_id, kind, _publisher = parse_event_subject(subject)
    if kind not in KINDS:
        return None
    if kind == "queued" and not data:
        headers = headers or {}
        try:
            _tenant, operation, _ = parse_job_subject(headers["Nats-Subject"])
            stamp, seq = headers["Nats-Time-Stamp"], int(headers["Nats-Sequence"])
        except (KeyError, ValueError) as exc:
            raise ValueError(f"queued event without its job headers: {exc}") from None
        return Queued(
            job_id=job_id, tenant=tenant,
            at=_timestamp(stamp),
            operation=operation,
            stream_seq=seq,
        )
    event = decode_event(data)
    if event.job_id != job_id or event.tenant not in ("", tenant):
        raise ValueError(f"event body names job {event.tenant}/{event.job_id}, its subject "
                         f"{tenant}/{job_id}")
    return event

