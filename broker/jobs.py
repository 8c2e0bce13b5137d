"""Job requests: one frozen msgspec Struct per operation, decoded by the operation in the subject.

A job is published on ``jobs.<operation>.<job_id>`` with a JSON body holding that operation's
parameters; the id and operation live in the subject, so a plain ``nats pub`` is a complete
client. Fields may only be added with defaults; unknown fields are ignored so an older agent
survives a newer client. Getting a constraint wrong here lets bad input reach FFmpeg, where it
fails late and expensively instead of early with a clear message.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "OPERATIONS",
    "CaptionJob",
    "InputRef",
    "JobRequest",
    "decode_job",
    "encode_job",
    "object_ref",
    "operation_of",
    "parse_input_ref",
]

InputRef = Annotated[
    str,
    Meta(
        pattern=r"^(obj:[^\s]+|https?://[^\s]+)$",
        max_length=2048,
        description=(
            "Where an input comes from: 'obj:<name>' for an object in the inputs bucket "
            "(uploaded by the client), or an http(s) URL the agent downloads."
        ),
    ),
]


class CaptionJob(Struct, frozen=True, kw_only=True):
    """Burn subtitles into a video. Audio is copied untouched."""

    video: InputRef
    srt: Annotated[InputRef, Meta(description="SubRip subtitles, UTF-8.")]


JobRequest = CaptionJob

OPERATIONS: dict[str, type[Struct]] = {"caption": CaptionJob}
_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    op: msgspec.json.Decoder(cls) for op, cls in OPERATIONS.items()
}
_ENCODER = msgspec.json.Encoder()


def operation_of(job: Struct) -> str:
    for op, cls in OPERATIONS.items():
        if type(job) is cls:
            return op
    raise ValueError(f"not a job request: {type(job).__name__}")


def decode_job(operation: str, data: bytes) -> JobRequest:
    """Decode a job body for ``operation``.

    Raises ``LookupError`` for an unknown operation and ``msgspec.ValidationError`` /
    ``msgspec.DecodeError`` (whose messages name the offending field) for a bad body.
    """
    decoder = _DECODERS.get(operation)
    if decoder is None:
        known = ", ".join(sorted(OPERATIONS))
        raise LookupError(f"unknown operation {operation!r}; known operations: {known}")
    return decoder.decode(data)


def encode_job(job: JobRequest) -> bytes:
    return _ENCODER.encode(job)


def object_ref(name: str) -> str:
    return f"obj:{name}"


def parse_input_ref(ref: str) -> tuple[str, str]:
    """-> ("object", name) or ("url", url)."""
    if ref.startswith("obj:"):
        return "object", ref[4:]
    return "url", ref
