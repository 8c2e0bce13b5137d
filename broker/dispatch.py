"""Dispatch: how an agent gets a job and reports on it, without touching JetStream.

Agents run on strangers' machines, so the fleet holds the job, not the agent. The controller's
dispatcher (controller/dispatcher.py) is the one consumer of JOBS. An agent asks it for work on
``fleet.work.<agent_id>`` and gets a ``Grant``: one job, leased to it alone. From then on the
agent speaks only of that job, on ``fleet.report.<agent_id>`` (a ``Report``; the reply is a
``ReportReply``) and ``fleet.upload.<agent_id>`` (its result, chunk by chunk). The dispatcher
checks every report against the lease (the subject names the agent, and the server only lets
an agent publish under its own id), then does the JetStream part itself: the job-state claim,
the event, the lease renewal, the ack. A report about a job the agent does not hold is refused
with ``not_holder``, and the agent must drop that job at once.

    fleet.work.<agent_id>     request: WorkRequest (or empty). Reply: WorkReply (grant None:
                              nothing queued within the wait; ask again)
    fleet.report.<agent_id>   request: Report. Reply: ReportReply
    fleet.input.<agent_id>    request: InputRequest (an ``obj:`` input the held job names).
                              Reply: headers only for ``info`` (Vidfleet-Size,
                              Vidfleet-Sha256, Vidfleet-Chunks), else chunk ``index`` as the
                              body; a refusal is Vidfleet-Error: <code>: <message>
                              (not_holder, not_an_input, missing, out_of_order, unavailable).
                              Chunks must be asked for in order, 0 first; several may be in
                              flight at once (they are answered in order)
    fleet.upload.<agent_id>   request: one chunk of the result (at most 256 KiB), headers
                              Vidfleet-Job (<tenant>.<job_id>), Vidfleet-Name (the object's
                              name) and Vidfleet-Offset (bytes sent before this chunk; 0 starts
                              the upload over). Reply: ReportReply. Several chunks may be in
                              flight at once: they are taken in the order sent

Getting this wrong re-opens what dispatch closed: an agent that could name another job in a
report (or whose upload counted for another job) could forge that job's outcome.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from broker.events import Failed, Progress, Retrying, Started, Succeeded

__all__ = [
    "CHUNKS_HEADER",
    "CHUNK_WINDOW",
    "ERROR_HEADER",
    "JOB_HEADER",
    "MAX_CHUNK_BYTES",
    "MAX_UNANSWERED_PER_SLOT",
    "NAME_HEADER",
    "OFFSET_HEADER",
    "SHA256_HEADER",
    "SIZE_HEADER",
    "Grant",
    "Hold",
    "InputRequest",
    "Lease",
    "Release",
    "Report",
    "ReportReply",
    "WorkReply",
    "WorkRequest",
    "decode_grant_reply",
    "decode_input_request",
    "decode_lease",
    "decode_report",
    "decode_report_reply",
    "decode_work_request",
    "encode",
]

JOB_HEADER = "Vidfleet-Job"
ERROR_HEADER = "Vidfleet-Error"
SIZE_HEADER = "Vidfleet-Size"
SHA256_HEADER = "Vidfleet-Sha256"
CHUNKS_HEADER = "Vidfleet-Chunks"
NAME_HEADER = "Vidfleet-Name"
OFFSET_HEADER = "Vidfleet-Offset"
MAX_CHUNK_BYTES = 256 * 1024
# Chunk requests an agent keeps in flight reading an input or sending a result: a transfer
# moves at most a window per round trip, so 32 (8 MiB) allows 80 MiB/s at 100 ms
# (bench/far_agent.py). The dispatcher takes at most MAX_UNANSWERED_PER_SLOT of an agent's
# messages per slot at once (two inputs read side by side, and reports); past it, the agent is
# taken for a flood (controller/holders.py).
CHUNK_WINDOW = 32
MAX_UNANSWERED_PER_SLOT = 2 * CHUNK_WINDOW + 16


class Grant(Struct, frozen=True, kw_only=True):
    """One job, leased to the agent that asked. ``body`` is the job's JSON as the tenant sent
    it (checked by the gateway against the operation's schema)."""

    tenant: str
    operation: str
    job_id: str
    attempt: int  # this delivery, from 1
    max_deliver: int  # the last attempt there will be: a retry asked for on it is a failure
    failures: int  # retryable failures of this job before this attempt
    queued_at: float  # unix seconds the job was stored
    hold_every_s: float  # send a Hold (or any report) at least this often, or lose the job
    body: str


class WorkRequest(Struct, frozen=True, kw_only=True):
    """How long the agent will wait for a job (the dispatcher holds it at most 30 s). 0: the
    agent no longer wants work (it is stopping); an open request of its is answered empty.

    An agent that runs several jobs at once (``slots``) asks for each on its own ``slot``
    (0 to slots - 1), and holds at most one job per slot: a new request on a slot supersedes
    that slot's open request and hands back the job that slot holds, and no other. The
    dispatcher caps ``slots`` at its own limit and fixes it at the agent's first request: a
    slot past it, or a request declaring another count, is refused. Each job on the machine
    pays 1/slots of its price."""

    wait_s: float = 10.0
    slot: Annotated[int, Meta(ge=0, le=63)] = 0
    slots: Annotated[int, Meta(ge=1, le=64)] = 1
    # The machine's price (what the controller launched it at): a job cancelled while it runs
    # is charged its time until then at this price.
    price_per_hour: float = 0.0
    build: str = ""  # the agent's build (gpu_agent/build.py): what cached results must match


class WorkReply(Struct, frozen=True, kw_only=True):
    grant: Grant | None = None
    error: str = ""  # set when the dispatcher refused (e.g. an unknown agent); retry later


class Hold(Struct, frozen=True, kw_only=True, tag_field="kind", tag="hold"):
    """Still working on it: renews the lease."""

    job_id: str
    tenant: str


class Release(Struct, frozen=True, kw_only=True, tag_field="kind", tag="release"):
    """Hand the job back without an outcome (the agent is stopping): it runs elsewhere now."""

    job_id: str
    tenant: str


# What an agent may say about the job it holds. The events are the ones clients see; the
# dispatcher publishes them under the agent's id once it has checked them against the lease.
Report = Hold | Release | Started | Progress | Retrying | Succeeded | Failed

ReplyCode = Literal["", "not_holder", "already_ended", "invalid", "upload_mismatch",
                    "results_quota_exceeded", "unavailable"]


class ReportReply(Struct, frozen=True, kw_only=True):
    """``ok`` false with ``not_holder``: the job is not (or no longer) this agent's; stop
    working on it. ``already_ended``: another attempt ended it; stop, nothing to report.
    ``unavailable``: the dispatcher could not do its part (the bus is in trouble); retry."""

    ok: bool
    code: ReplyCode = ""
    message: str = ""


class InputRequest(Struct, frozen=True, kw_only=True):
    """One step of reading an input of the held job: its size, digest and chunk count
    (``info``), or chunk number ``index`` (0 first, then each next one in turn)."""

    tenant: str
    job_id: str
    name: str  # as in the job's ``obj:<name>``
    info: bool = False
    index: int = 0


class Lease(Struct, frozen=True, kw_only=True):
    """The dispatcher's record of one grant (KV ``leases``, key: the agent id, then
    ``.<slot>`` for a slot past 0). It outlives a controller restart, so a job in hand keeps
    running."""

    agent_id: str
    slot: int = 0  # which of the agent's slots holds it (WorkRequest.slot)
    tenant: str
    operation: str
    job_id: str
    attempt: int
    stream_seq: int
    ack_subject: str  # the JetStream delivery's reply subject: +WPI, +ACK, -NAK, +TERM
    granted_at: float
    inputs: tuple[str, ...] = ()  # the objects the job names: all its holder may read
    price_per_hour: float = 0.0  # the holder's share of its machine's price: price / slots
    cache_key: str = ""  # the job's result-cache key, if it may be cached


_ENCODER = msgspec.json.Encoder()
_REPORT = msgspec.json.Decoder(Report)
_REPLY = msgspec.json.Decoder(ReportReply)
_WORK = msgspec.json.Decoder(WorkReply)
_WORK_REQUEST = msgspec.json.Decoder(WorkRequest)
_LEASE = msgspec.json.Decoder(Lease)
_INPUT = msgspec.json.Decoder(InputRequest)


def encode(value: Struct) -> bytes:
    return _ENCODER.encode(value)


def decode_report(data: bytes) -> Report:
    """Raises ValueError (msgspec's errors are ValueErrors) on anything malformed."""
    return _REPORT.decode(data)


def decode_report_reply(data: bytes) -> ReportReply:
    return _REPLY.decode(data)


def decode_grant_reply(data: bytes) -> WorkReply:
    return _WORK.decode(data)


def decode_work_request(data: bytes) -> WorkRequest:
    return _WORK_REQUEST.decode(data)


def decode_input_request(data: bytes) -> InputRequest:
    return _INPUT.decode(data)


def decode_lease(data: bytes) -> Lease:
    return _LEASE.decode(data)
