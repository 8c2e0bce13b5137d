"""Writing objects to JetStream object stores: chunks sent without waiting for each store,
in the layout every NATS client reads (broker/objects.py reads them back)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import os
import secrets
from collections import deque
from datetime import UTC, datetime

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ObjectInfo, ObjectMetaOptions
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError
from nats.js.kv import MSG_ROLLUP_SUBJECT

from broker.objects import CHUNK_SIZE_BYTES, ObjectCorrupt, ObjectMissing, StoreFull, object_info

__all__ = ["ObjectWriter", "upload"]


async def upload(
    js: JetStreamContext, bucket: str, name: str,
    source: str | os.PathLike[str] | io.BufferedIOBase,
    *, description: str | None = None,
) -> ObjectInfo:
    """Store a file (path or binary file object) as ``name``, replacing an object of that
    name (its chunks are purged once the new one is committed, as every NATS client does).
    Raises StoreFull when the bucket is at its limit, ObjectMissing when there is no such
    bucket."""
    old = await _current_nuid(js, bucket, name)
    writer = ObjectWriter(js, bucket, name)
    try:
        with contextlib.ExitStack() as files:
            f = (files.enter_context(open(source, "rb"))
                 if isinstance(source, (str, os.PathLike)) else source)
            while chunk := f.read(CHUNK_SIZE_BYTES):
                await writer.append(chunk)
        info = await writer.commit(description)
    except BaseException:
        await writer.abort()
        raise
    if old:
        with contextlib.suppress(NotFoundError, APIError):
            await js.purge_stream(f"OBJ_{bucket}", subject=f"$O.{bucket}.C.{old}")
    return info


async def _current_nuid(js: JetStreamContext, bucket: str, name: str) -> str | None:
    """Where the chunks of the object now called ``name`` live; None when there is none (a
    missing bucket is found by the first chunk's store)."""
    try:
        return (await object_info(js, bucket, name)).nuid
    except (ObjectMissing, ObjectCorrupt):  # (what stood there unreadable is overwritten)
        return None


def _full(exc: APIError) -> bool:
    return "maximum bytes" in (exc.description or "")


class ObjectWriter:
    """An object written chunk by chunk as the bytes arrive (from another process), in the
    object-store layout every NATS client reads. The digest and size are the writer's own,
    computed from what it stored: whoever sent the bytes cannot make them claim anything else.

    Nothing is visible until ``commit``; ``abort`` removes the chunks. Raises StoreFull when
    the bucket is at its limit."""

    _WINDOW = 16

    def __init__(self, js: JetStreamContext, bucket: str, name: str, *,
                 store_timeout_s: float = 10.0) -> None:
        self._js = js
        self.bucket = bucket
        self.name = name
        self.nuid = secrets.token_hex(11)
        self.size = 0
        self.chunks = 0
        self._sha = hashlib.sha256()
        self._acks = _StoreAcks(js._nc)  # (the connection the context publishes on)
        self._unstored: deque[asyncio.Future[None]] = deque()
        self._store_timeout_s = store_timeout_s

    @property
    def _chunk_subject(self) -> str:
        return f"$O.{self.bucket}.C.{self.nuid}"

    async def append(self, data: bytes) -> None:
        """Send one chunk. Up to ``_WINDOW`` chunks are on their way at once: waiting for
        each one's store before sending the next cost a round trip per 256 KiB. A failed
        store is raised by a later ``append`` or by ``commit``."""
        self._unstored.append(await self._acks.send(self._chunk_subject, data))
        self._sha.update(data)
        self.size += len(data)
        self.chunks += 1
        while len(self._unstored) > self._WINDOW:
            await self._stored(self._unstored.popleft())

    async def _stored(self, ack: asyncio.Future[None]) -> None:
        try:
            await asyncio.wait_for(ack, self._store_timeout_s)
        except APIError as exc:
            if _full(exc):
                raise await _store_full(self._js, self.bucket) from None
            raise
        except NoStreamResponseError:
            raise ObjectMissing(f"no object store {self.bucket!r}") from None

    def sha256_hex(self) -> str:
        return self._sha.hexdigest()

    async def commit(self, description: str | None = None) -> ObjectInfo:
        """Wait for every chunk's store, then make the object visible under its name."""
        while self._unstored:
            await self._stored(self._unstored.popleft())
        await self._acks.close()
        digest = base64.urlsafe_b64encode(self._sha.digest()).decode()
        info = ObjectInfo(name=self.name, description=description, bucket=self.bucket,
                          nuid=self.nuid, size=self.size, chunks=self.chunks,
                          mtime=datetime.now(UTC).isoformat(), digest=f"SHA-256={digest}",
                          options=ObjectMetaOptions(max_chunk_size=CHUNK_SIZE_BYTES))
        meta = base64.urlsafe_b64encode(self.name.encode()).decode()
        await self._js.publish(f"$O.{self.bucket}.M.{meta}", json.dumps(info.as_dict()).encode(),
                               headers={"Nats-Rollup": MSG_ROLLUP_SUBJECT})
        return info

    async def abort(self) -> None:
        self._unstored.clear()
        await self._acks.close()
        with contextlib.suppress(NotFoundError, APIError):
            await self._js.purge_stream(f"OBJ_{self.bucket}", subject=self._chunk_subject)


class _StoreAcks:
    """JetStream's answers to publishes sent without waiting, one future each. (nats-py
    2.16's ``publish_async`` never settles a refused publish: its reply handler raises the
    refusal instead of setting it, so a full bucket would look like a timeout.)"""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._sent = 0

    async def send(self, subject: str, data: bytes) -> asyncio.Future[None]:
        if self._sub is None:
            self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._answer)
        self._sent += 1
        token = str(self._sent)
        ack = self._waiting[token] = asyncio.get_running_loop().create_future()
        await self._nc.publish(subject, data, reply=f"{self._inbox}.{token}")
        return ack

    async def _answer(self, msg: Msg) -> None:
        ack = self._waiting.pop(msg.subject.rsplit(".", 1)[-1], None)
        if ack is None or ack.done():
            return
        if msg.headers and msg.headers.get("Status") == "503":  # no stream takes the subject
            ack.set_exception(NoStreamResponseError())
            return
        try:
            error = json.loads(msg.data).get("error")
        except (ValueError, AttributeError):
            error = {"description": f"unreadable store answer {msg.data[:80]!r}"}
        if error:
            ack.set_exception(APIError(code=error.get("code"), err_code=error.get("err_code"),
                                       description=error.get("description")))
        else:
            ack.set_result(None)

    async def close(self) -> None:
        for ack in self._waiting.values():
            ack.cancel()
        self._waiting.clear()
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None


async def _store_full(js: JetStreamContext, bucket: str) -> StoreFull:
    limit = (await js.stream_info(f"OBJ_{bucket}")).config.max_bytes
    return StoreFull(f"bucket {bucket!r} is full (its limit is {limit} bytes): delete "
                     "objects or wait for them to expire")
