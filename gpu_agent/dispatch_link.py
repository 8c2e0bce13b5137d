"""The agent's side of dispatch (broker/dispatch.py): ask for a job, report on it, send its
result. The agent touches no JetStream stream for any of this; the controller's dispatcher does
that part, for the job this agent holds only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import BinaryIO

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from broker.dispatch import (
    CHUNK_WINDOW,
    CHUNKS_HEADER,
    ERROR_HEADER,
    JOB_HEADER,
    MAX_CHUNK_BYTES,
    NAME_HEADER,
    OFFSET_HEADER,
    SHA256_HEADER,
    SIZE_HEADER,
    Grant,
    InputRequest,
    Report,
    ReportReply,
    WorkRequest,
    decode_grant_reply,
    decode_report_reply,
    encode,
)
from broker.objects import ObjectCorrupt, ObjectMissing, StoreFull
from broker.subjects import input_subject, report_subject, upload_subject, work_subject

__all__ = ["DispatchLink", "InputUnavailable", "LeaseLost", "UploadRefused"]



class LeaseLost(Exception):
    """The dispatcher says this job is no longer ours: stop working on it, report nothing."""


class UploadRefused(IOError):
    pass


class InputUnavailable(IOError):
    """The dispatcher could not read the input just now (its JetStream call failed)."""


class DispatchLink:
    def __init__(self, nc: Client, agent_id: str, *, timeout_s: float = 10.0,
                 price_per_hour: float = 0.0, build: str = "", slots: int = 1,
                 input_window: int = CHUNK_WINDOW, upload_window: int = CHUNK_WINDOW) -> None:
        """``price_per_hour``: this machine's, told with every work request (a job cancelled
        while it runs here is charged its time at this price); ``build`` too (what a cached
        result must have been made by), and ``slots``, how many jobs it runs at once (each
        asks on its own slot, 0 to slots - 1). The windows: chunk requests in flight at once
        reading an input and sending the result; a transfer moves at most a window per round
        trip."""
        self._input_window, self._upload_window = input_window, upload_window
        self._nc = nc
        self._agent_id = agent_id
        self.slots = slots
        self._timeout_s = timeout_s
        self._price_per_hour = price_per_hour
        self._build = build

    async def next_job(self, wait_s: float, slot: int = 0) -> Grant | None:
        """One long-poll for a job, for ``slot`` (whose job in hand, if any, goes back).
        Raises nats errors (no dispatcher: NoRespondersError) and TimeoutError, and
        RuntimeError when the dispatcher refuses this agent."""
        msg = await self._nc.request(work_subject(self._agent_id),
                                     encode(WorkRequest(wait_s=wait_s, slot=slot,
                                                        slots=self.slots,
                                                        price_per_hour=self._price_per_hour,
                                                        build=self._build)),
                                     timeout=wait_s + self._timeout_s)
        reply = decode_grant_reply(msg.data)
        if reply.error:
            raise RuntimeError(f"the dispatcher refused: {reply.error}")
        return reply.grant

    async def next_job_or_stop(self, wait_s: float, stop: asyncio.Event,
                               slot: int = 0) -> Grant | None:
        """``next_job``, abandoned at once when ``stop`` is set (and withdrawn, so the
        dispatcher leases nothing to an agent that is leaving)."""
        ask = asyncio.create_task(self.next_job(wait_s, slot))
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({ask, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not ask.done():
            ask.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, nats.errors.Error):
                await ask
            await self.stop_waiting(slot)
            return None
        return ask.result()

    async def stop_waiting(self, slot: int = 0) -> None:
        """Withdraw ``slot``'s open work request (the agent is stopping), so no job is
        leased to an agent that will never run it."""
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self._nc.request(work_subject(self._agent_id),
                                   encode(WorkRequest(wait_s=0, slot=slot, slots=self.slots)),
                                   timeout=self._timeout_s)

    async def report(self, report: Report) -> ReportReply:
        """Raises nats errors and TimeoutError when the dispatcher cannot be reached."""
        msg = await self._nc.request(report_subject(self._agent_id), encode(report),
                                     timeout=self._timeout_s)
        return decode_report_reply(msg.data)

    async def report_until_heard(self, report: Report, *, attempts: int = 6) -> ReportReply:
        """A report that must arrive (an outcome, a release): retried through a reconnect or
        a controller restart, with a growing pause. A reply of ``unavailable`` is retried too.
        Raises the last error when every attempt failed."""
        delay_s = 0.5
        for n in range(attempts):
            try:
                reply = await self.report(report)
                if reply.code != "unavailable":
                    return reply
                error: Exception = RuntimeError(reply.message)
            except (nats.errors.Error, TimeoutError) as exc:
                error = exc
            if n + 1 < attempts:
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
        raise error

    async def fetch_input(self, dest: Path, *, tenant: str, job_id: str, name: str,
                          max_size_bytes: int | None = None) -> int:
        """Write input object ``name`` of the held job to ``dest`` and verify its size and
        SHA-256; returns its size. Raises ObjectMissing, ValueError (over
        ``max_size_bytes``, checked before any byte moves), ObjectCorrupt, LeaseLost,
        InputUnavailable, and nats errors / TimeoutError when the dispatcher is not there."""
        def ask(**fields: object) -> tuple[bytes, dict[str, str] | None]:
            request = InputRequest(tenant=tenant, job_id=job_id, name=name,
                                   **fields)  # type: ignore[arg-type]
            return encode(request), None

        [info_msg] = [m async for m in self._pipelined(input_subject(self._agent_id),
                                                       iter([ask(info=True)]))]
        info = _input_reply(info_msg.headers)
        size, chunks = int(info[SIZE_HEADER]), int(info[CHUNKS_HEADER])
        if max_size_bytes is not None and size > max_size_bytes:
            raise ValueError(f"object {name!r} is {size} bytes, over the limit of "
                             f"{max_size_bytes} bytes")
        sha, written = hashlib.sha256(), 0
        try:
            with open(dest, "wb") as out:
                requests = (ask(index=i) for i in range(chunks))
                async with contextlib.aclosing(self._pipelined(
                        input_subject(self._agent_id), requests,
                        self._input_window)) as replies:
                    async for msg in replies:
                        _input_reply(msg.headers)
                        sha.update(msg.data)
                        out.write(msg.data)
                        written += len(msg.data)
            if (written, sha.hexdigest()) != (size, info[SHA256_HEADER]):
                raise ObjectCorrupt(f"object {name!r}: got {written} bytes that do not match "
                                    "its size and SHA-256")
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return size

    async def upload(self, path: Path, *, tenant: str, job_id: str, name: str
                     ) -> tuple[int, str]:
        """Send the file as the job's result; returns (size, SHA-256 hex) of what was sent.
        Raises StoreFull (the tenant's results bucket is full), LeaseLost, UploadRefused."""
        for first_try in (True, False):
            try:
                return await self._send(path, tenant=tenant, job_id=job_id, name=name)
            except _StartOver:
                if not first_try:
                    raise UploadRefused("the dispatcher lost the upload twice") from None
        raise AssertionError("unreachable")

    async def _send(self, path: Path, *, tenant: str, job_id: str, name: str
                    ) -> tuple[int, str]:
        sha = hashlib.sha256()
        sent = 0

        def chunks(f: BinaryIO) -> Iterator[tuple[bytes, dict[str, str] | None]]:
            nonlocal sent
            while True:
                chunk = f.read(MAX_CHUNK_BYTES)
                if not chunk and sent > 0:
                    return
                headers = {JOB_HEADER: f"{tenant}.{job_id}", NAME_HEADER: name,
                           OFFSET_HEADER: str(sent)}
                sha.update(chunk)
                sent += len(chunk)
                yield chunk, headers
                if not chunk:  # an empty file: its one (empty) chunk is sent
                    return

        with open(path, "rb") as f:
            async with contextlib.aclosing(self._pipelined(
                    upload_subject(self._agent_id), chunks(f),
                    self._upload_window)) as replies:
                async for msg in replies:
                    reply = decode_report_reply(msg.data)
                    if reply.ok:
                        continue
                    if reply.code == "not_holder":
                        raise LeaseLost(reply.message)
                    if reply.code == "results_quota_exceeded":
                        raise StoreFull(reply.message)
                    if reply.code == "upload_mismatch":
                        raise _StartOver
                    raise UploadRefused(f"{reply.code}: {reply.message}")
        return sent, sha.hexdigest()

    async def _pipelined(self, subject: str,
                         requests: Iterator[tuple[bytes, dict[str, str] | None]],
                         window: int = 1) -> AsyncGenerator[Msg, None]:
        """Requests with up to ``window`` in flight, replies yielded in order: a link with
        a long round trip (a rented machine far from the server) moves a window a round
        trip, not a chunk. The dispatcher takes one agent's requests in the order sent."""
        flying: deque[asyncio.Task[Msg]] = deque()
        try:
            for data, headers in requests:
                flying.append(asyncio.create_task(self._nc.request(
                    subject, data, timeout=self._timeout_s, headers=headers)))
                if len(flying) >= window:
                    yield await flying.popleft()
            while flying:
                yield await flying.popleft()
        finally:
            for task in flying:
                task.cancel()


def _input_reply(headers: dict[str, str] | None) -> dict[str, str]:
    headers = headers or {}
    if error := headers.get(ERROR_HEADER):
        code, _, message = error.partition(": ")
        if code == "not_holder":
            raise LeaseLost(message)
        if code in ("unavailable", "out_of_order"):
            raise InputUnavailable(message)
        raise ObjectMissing(message)
    return headers


class _StartOver(Exception):
    pass
