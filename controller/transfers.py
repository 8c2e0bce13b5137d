"""The bytes of a leased job: its inputs out to the holder, its result in from it.

The dispatcher has checked that the agent holds the job; this module moves the data and keeps
it to that job: only the ``obj:`` inputs its body names are read, and the result is written into
the tenant's bucket here, measured here (size, SHA-256) and committed only when the holder's
``succeeded`` describes those same bytes. The wire format is in broker/dispatch.py.
"""

from __future__ import annotations

import contextlib
import re

import msgspec
import nats.errors
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from broker.dispatch import (
    CHUNKS_HEADER,
    ERROR_HEADER,
    NAME_HEADER,
    OFFSET_HEADER,
    SHA256_HEADER,
    SIZE_HEADER,
    InputRequest,
    ReportReply,
)
from broker.events import OutputInfo
from broker.object_writes import ObjectWriter
from broker.objects import (
    ObjectMissing,
    StoreFull,
    digest_hex,
    iter_chunks,
    object_info,
)
from broker.subjects import inputs_bucket, results_bucket
from controller.leases import Held, Reading

__all__ = ["Transfers"]

_FILE_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Transfers:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    # -- inputs ----------------------------------------------------------------------------

    async def serve_input(self, nc: Client, msg: Msg, held: Held,
                          request: InputRequest) -> None:
        """Answer one step of reading an input: its size and digest, or its next chunk."""
        if request.name not in held.lease.inputs:
            logger.warning("{agent} asked for input {name!r}, which its job does not name; "
                           "refused", agent=held.lease.agent_id, name=request.name)
            return await refuse(nc, msg, f"not_an_input: the job you hold does not name "
                                         f"obj:{request.name}")
        bucket = inputs_bucket(request.tenant)
        reading = held.reading.get(request.name)
        try:
            if request.info or (request.index == 0 and
                                (reading is None or reading.position != 0)):
                if reading is not None:
                    await reading.close()
                info = await object_info(self._js, bucket, request.name)
                reading = held.reading[request.name] = Reading(
                    info, iter_chunks(self._js, bucket, info))
                if request.info:
                    return await _send(nc, msg, b"", {
                        SIZE_HEADER: str(info.size or 0), SHA256_HEADER: digest_hex(info),
                        CHUNKS_HEADER: str(info.chunks or 0)})
            if reading is None or request.index != reading.position:
                return await refuse(nc, msg, "out_of_order: ask for the chunks in order, "
                                             "from index 0")
            try:
                data = await anext(reading.chunks)
            except StopAsyncIteration:
                return await refuse(nc, msg, f"missing: the object has no chunk "
                                             f"{request.index}")
            reading.position += 1
        except ObjectMissing as exc:
            return await refuse(nc, msg, f"missing: {exc}")
        except (nats.errors.Error, TimeoutError) as exc:
            held.reading.pop(request.name, None)
            return await refuse(nc, msg, f"unavailable: {type(exc).__name__}: {exc}")
        await _send(nc, msg, data, {})
        if reading.position == (reading.info.chunks or 0):  # (after the answer: not on its path)
            del held.reading[request.name]
            await reading.close()

    # -- the result ------------------------------------------------------------------------

    async def take_chunk(self, msg: Msg, held: Held) -> ReportReply:
        """Append one chunk of the holder's result to the upload under way (offset 0 starts
        it over)."""
        headers = msg.headers or {}
        lease = held.lease
        name = headers.get(NAME_HEADER, "")
        head, _, file = name.rpartition("/")
        if head != f"{lease.job_id}/{lease.attempt}" or not _FILE_RE.match(file):
            return ReportReply(ok=False, code="invalid", message=(
                f"a result is named {lease.job_id}/{lease.attempt}/<file>, file from "
                "A-Z a-z 0-9 . _ - (at most 64)"))
        try:
            offset = int(headers.get(OFFSET_HEADER, ""))
        except ValueError:
            return ReportReply(ok=False, code="invalid", message="Vidfleet-Offset: not a number")
        if offset == 0:
            if held.upload is not None:
                await held.upload.abort()
            held.upload = ObjectWriter(self._js, results_bucket(lease.tenant), name)
        upload = held.upload
        if upload is None or upload.name != name or upload.size != offset:
            return ReportReply(ok=False, code="upload_mismatch", message=(
                "this chunk does not follow the upload on record: start over at offset 0"))
        try:
            await upload.append(msg.data)
        except StoreFull as exc:
            return await _quota_refusal(held, exc)
        return ReportReply(ok=True)

    async def checked_output(self, held: Held, claimed: OutputInfo
                             ) -> OutputInfo | ReportReply:
        """The result as stored here: committed, and described by what was measured here. A
        claim that disagrees is refused (the agent re-sends)."""
        upload, stored = held.upload, held.stored
        if upload is not None and upload.name == claimed.name:
            if (upload.size, upload.sha256_hex()) != (claimed.size_bytes, claimed.sha256):
                await upload.abort()
                held.upload = None
                return ReportReply(ok=False, code="upload_mismatch",
                                   message="the upload does not match the reported size and "
                                           "SHA-256: send it again")
            try:
                await upload.commit()
            except StoreFull as exc:  # (a chunk's store fails as late as the commit)
                return await _quota_refusal(held, exc)
            held.upload = None
            stored = held.stored = msgspec.structs.replace(
                claimed, bucket=upload.bucket, name=upload.name, size_bytes=upload.size,
                sha256=upload.sha256_hex())
        if stored is None or (stored.name, stored.size_bytes, stored.sha256) != (
                claimed.name, claimed.size_bytes, claimed.sha256):
            return ReportReply(ok=False, code="upload_mismatch",
                               message="no upload of that name and content for this job: "
                                       "send it again")
        return stored


async def _quota_refusal(held: Held, exc: StoreFull) -> ReportReply:
    """The tenant's results bucket is full: the upload goes, and the agent fails the job."""
    if held.upload is not None:
        await held.upload.abort()
        held.upload = None
    return ReportReply(ok=False, code="results_quota_exceeded", message=str(exc))


async def refuse(nc: Client, msg: Msg, error: str) -> None:
    """An input step refused: ``Vidfleet-Error: <code>: <message>``, no body."""
    await _send(nc, msg, b"", {ERROR_HEADER: error})


async def _send(nc: Client, msg: Msg, data: bytes, headers: dict[str, str]) -> None:
    with contextlib.suppress(nats.errors.Error):
        await nc.publish(msg.reply, data, headers=headers)
