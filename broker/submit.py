"""The submit exchange: a tenant's request on ``submit.<tenant>.<operation>.<job_id>`` (the job
body, as for JOBS) and the gateway's reply.

Tenants never write JOBS themselves: JetStream's duplicate detection is per stream, so a
``Nats-Msg-Id`` chosen by one tenant could make another tenant's submit a "duplicate" that
never runs. The gateway checks the id, the operation and the body, then stores the job under
``jobs.<tenant>.<operation>.<job_id>`` with the message id ``<tenant>.<job_id>``. The tenant in
the subject is the server's word: each tenant account can publish only its own.
"""

from __future__ import annotations

import msgspec
from msgspec import Struct

__all__ = ["SubmitReply", "decode_submit_reply", "encode_submit_reply"]


class SubmitReply(Struct, frozen=True, kw_only=True):
    """``ok`` with ``duplicate`` (the id was already queued or ran; nothing new runs) and the
    stream sequence; or not ``ok`` with a stable ``code`` (``invalid_job_id``,
    ``unknown_operation``, ``invalid_job``, ``quota_exceeded``, ``queue_full``,
    ``unavailable``) and a message
    for a person. Fields may only be added with defaults."""

    ok: bool
    job_id: str = ""
    operation: str = ""
    duplicate: bool = False
    stream_seq: int | None = None
    code: str = ""
    message: str = ""


_DECODER = msgspec.json.Decoder(SubmitReply)
_ENCODER = msgspec.json.Encoder()


def encode_submit_reply(reply: SubmitReply) -> bytes:
    return _ENCODER.encode(reply)


def decode_submit_reply(data: bytes) -> SubmitReply:
    return _DECODER.decode(data)
