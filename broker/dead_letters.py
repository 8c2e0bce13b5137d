"""Dead letters: jobs that failed for good, kept so their tenant can look at them and run them
again once the cause is fixed.

    deadletters.<tenant>.list             request: DeadLettersQuery (or empty).
                                          Reply: DeadLettersReply (letters without body and
                                          stderr tail, newest first)
    deadletters.<tenant>.get.<job_id>     request: empty. Reply: DeadLetterReply (all of it)
    deadletters.<tenant>.retry.<job_id>   request: empty. Reply: DeadLetterReply: the job is
                                          queued again under its own id, as a new attempt
    deadletters.<tenant>.drop.<job_id>    request: empty. Reply: DeadLetterReply

A job is kept when it fails for good: a final failure, its retries spent, or its deliveries
exhausted (machines lost). Its letter (KV ``deadletters``, key ``<tenant>.<job_id>``) holds the
job's body, the reason, the scrubbed tail of FFmpeg's stderr, and a copy of every ``obj:``
input (object store ``deadletter-inputs``, as ``<tenant>/<job_id>/<name>``), because the
tenant's own inputs expire sooner. Letters and copies expire together (``vidfleet up
--dead-letter-days``). They are not in JOBS, so they are not backlog and rent nothing.

A retry numbers its attempts after the ones before (``Vidfleet-Attempts-Before`` on the
requeued JOBS message), so every attempt's result name ``<job>/<attempt>/`` stays unique, and
gets a fresh retry budget (``Vidfleet-Failures-Before``). It publishes a ``requeued`` event:
an outcome published before a later ``requeued`` is no longer the job's outcome.

The tenant token is the server's word (each tenant account imports only its own
``deadletters.<tenant>.>``). Getting this wrong shows one tenant's failed jobs, bodies and
logs to another, or lets it rerun (and bill) them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

import msgspec
from msgspec import Struct

from broker.events import JobError

__all__ = [
    "ATTEMPTS_BEFORE_HEADER",
    "FAILURES_BEFORE_HEADER",
    "DeadLetter",
    "DeadLetterReply",
    "DeadLettersQuery",
    "DeadLettersReply",
    "InputsState",
    "decode_dead_letter",
    "decode_dead_letter_reply",
    "decode_dead_letters_query",
    "decode_dead_letters_reply",
    "encode",
    "kept_input_name",
    "requeue_offsets",
    "scrub_log_tail",
]

ATTEMPTS_BEFORE_HEADER = "Vidfleet-Attempts-Before"
FAILURES_BEFORE_HEADER = "Vidfleet-Failures-Before"

# none: the job names no obj: input. keeping: being copied. kept: every one copied.
# lost: some could not be kept (expired already, or over the tenant's share); see inputs_note.
InputsState = Literal["none", "keeping", "kept", "lost"]


class DeadLetter(Struct, frozen=True, kw_only=True):
    tenant: str
    job_id: str
    operation: str
    body: str  # the job's JSON as queued ("" in a listing)
    error: JobError  # why it failed; error.stderr_tail is FFmpeg's ("" in a listing)
    attempts: int  # attempt numbers used so far (a retry's first attempt is attempts + 1)
    failures: int  # retryable failures counted so far (a retry starts a fresh budget)
    failed_at: float
    expires_at: float  # unix seconds: the letter and its kept inputs go then
    cost_usd: float = 0.0  # what its attempts cost
    inputs: list[str] = []  # the obj: names the job reads
    inputs_state: InputsState = "none"
    inputs_bytes: int = 0  # what the kept copies hold
    inputs_note: str = ""  # why inputs were not kept, for a person


class DeadLettersQuery(Struct, frozen=True, kw_only=True):
    limit: int = 100  # 1-500


class DeadLettersReply(Struct, frozen=True, kw_only=True):
    ok: bool
    letters: list[DeadLetter] = []
    truncated: bool = False  # more letters than ``limit``
    code: str = ""
    message: str = ""


class DeadLetterReply(Struct, frozen=True, kw_only=True):
    """``ok`` with the letter (as it was, for retry and drop). Not ``ok``: ``code``
    ``not_found`` (no letter: never failed, dropped, expired or retried already),
    ``invalid_job_id``, ``busy`` (its inputs are being kept; ask again in a moment),
    ``inputs_missing`` (an input is gone: submit the job anew), ``inputs_quota`` (the
    tenant's inputs bucket is full), ``conflict`` (the job's state changed under it) or
    ``unavailable`` (try again); ``message`` for a person."""

    ok: bool
    letter: DeadLetter | None = None
    attempt: int = 0  # retry: the number the job's next attempt will have
    code: str = ""
    message: str = ""


def kept_input_name(tenant: str, job_id: str, name: str) -> str:
    """Where a dead letter's copy of input ``name`` is kept."""
    return f"{tenant}/{job_id}/{name}"


def requeue_offsets(headers: Mapping[str, str] | None) -> tuple[int, int]:
    """(attempts, retryable failures) before this JOBS message: 0, 0 unless it is a retried
    dead letter. A malformed header counts as 0 (attempt names could then repeat, never a
    job be lost)."""
    def number(name: str) -> int:
        try:
            return max(0, int((headers or {}).get(name, "0")))
        except ValueError:
            return 0
    return number(ATTEMPTS_BEFORE_HEADER), number(FAILURES_BEFORE_HEADER)


_TAIL_MAX_CHARS = 4096
_LINE_MAX_CHARS = 400
_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")  # escapes first
_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]{1,15})://(?:[^\s/@]*@)?([^\s/?#]*)([^\s?#]*)"
                  r"(?:[?#][^\s]*)?")
_SECRET = re.compile(r"(?i)\b(token|secret|password|passwd|key|signature|sig|auth"
                     r"|authorization|credential|jwt|seed)(\s*[=:]\s*)\S+")


def scrub_log_tail(text: str, *, max_chars: int = _TAIL_MAX_CHARS) -> str:
    """The last ``max_chars`` of a tool's log, safe to keep and show: terminal escapes and
    control characters removed, URLs without their user info, query or fragment, anything
    shaped ``token=...`` (secret, password, key, signature...) masked, lines cut at 400
    characters. Whoever wrote the log is not trusted (an agent, FFmpeg reading a crafted
    input)."""
    lines = []
    for line in _CONTROL.sub("", text).splitlines():
        line = _URL.sub(lambda m: f"{m[1]}://{m[2]}{m[3]}", line)
        line = _SECRET.sub(lambda m: f"{m[1]}{m[2]}***", line)
        lines.append(line[:_LINE_MAX_CHARS])
    tail = "\n".join(lines).strip("\n")
    return tail[-max_chars:]


_ENCODER = msgspec.json.Encoder()
_LETTER = msgspec.json.Decoder(DeadLetter)
_QUERY = msgspec.json.Decoder(DeadLettersQuery)
_REPLY = msgspec.json.Decoder(DeadLetterReply)
_LIST_REPLY = msgspec.json.Decoder(DeadLettersReply)


def encode(message: Struct) -> bytes:
    return _ENCODER.encode(message)


def decode_dead_letter(data: bytes) -> DeadLetter:
    return _LETTER.decode(data)


def decode_dead_letters_query(data: bytes) -> DeadLettersQuery:
    """Raises ValueError on anything malformed (an empty body is the default query)."""
    return _QUERY.decode(data) if data.strip() else DeadLettersQuery()


def decode_dead_letter_reply(data: bytes) -> DeadLetterReply:
    return _REPLY.decode(data)


def decode_dead_letters_reply(data: bytes) -> DeadLettersReply:
    return _LIST_REPLY.decode(data)
