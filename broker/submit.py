"""A tenant's requests to the control plane and their replies: submit (a request on
``submit.<tenant>.<operation>.<job_id>``, the job body as for JOBS, answered by the gateway) and
cancel (``cancel.<tenant>.<job_id>``, answered by the dispatcher).

Tenants never write JOBS themselves: JetStream's duplicate detection is per stream, so a
``Nats-Msg-Id`` chosen by one tenant could make another tenant's submit a "duplicate" that
never runs. The gateway checks the id, the operation and the body, then stores the job under
``jobs.<tenant>.<operation>.<job_id>`` with the message id ``<tenant>.<job_id>``. The tenant in
the subject is the server's word: each tenant account can publish only its own.
"""

from __future__ import annotations

import msgspec
from msgspec import Struct

__all__ = ["CancelReply", "CancelRequest", "SubmitReply", "decode_cancel_reply",
           "decode_cancel_request", "decode_submit_reply", "encode", "encode_submit_reply"]


class SubmitReply(Struct, frozen=True, kw_only=True):
    """``ok`` with ``duplicate`` (the id was already queued or ran; nothing new runs) and the
    stream sequence; or not ``ok`` with a stable ``code`` (``invalid_job_id``,
    ``unknown_operation``, ``invalid_job``, ``quota_exceeded``, ``queue_full``,
    ``webhook_unconfigured``, ``unavailable``) and a message
    for a person. Fields may only be added with defaults."""

    ok: bool
    job_id: str = ""
    operation: str = ""
    duplicate: bool = False
    stream_seq: int | None = None
    # Answered from the result cache: the job succeeded already (its succeeded event is
    # published, cached true); nothing was queued (broker/result_cache.py).
    cached: bool = False
    code: str = ""
    message: str = ""


class CancelRequest(Struct, frozen=True, kw_only=True):
    """Body of a cancel (may be empty)."""

    reason: str = ""  # kept in the cancelled event (at most 500 characters)


class CancelReply(Struct, frozen=True, kw_only=True):
    """``ok``: the job is cancelled now (this request did it; ``state`` "cancelled"). Not
    ``ok``: ``code`` ``already_ended`` (``state`` is the outcome that came first: succeeded,
    failed or cancelled), ``not_found`` (no such job of this tenant), ``invalid_job_id``,
    ``invalid`` (an unreadable body) or ``unavailable`` (try again); ``message`` for a person.
    Fields may only be added with defaults."""

    ok: bool
    job_id: str = ""
    state: str = ""
    was_running: bool = False  # an attempt was running (its agent is told to stop at once)
    code: str = ""
    message: str = ""


_DECODER = msgspec.json.Decoder(SubmitReply)
_CANCEL_REQUEST = msgspec.json.Decoder(CancelRequest)
_CANCEL_REPLY = msgspec.json.Decoder(CancelReply)
_ENCODER = msgspec.json.Encoder()


def encode(message: CancelRequest | CancelReply) -> bytes:
    return _ENCODER.encode(message)


def decode_cancel_request(data: bytes) -> CancelRequest:
    return _CANCEL_REQUEST.decode(data) if data.strip() else CancelRequest()


def decode_cancel_reply(data: bytes) -> CancelReply:
    return _CANCEL_REPLY.decode(data)


def encode_submit_reply(reply: SubmitReply) -> bytes:
    return _ENCODER.encode(reply)


def decode_submit_reply(data: bytes) -> SubmitReply:
    return _DECODER.decode(data)
