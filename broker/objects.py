"""Moving files through JetStream object stores, fast and verified.

nats-py's ``ObjectStore.get`` tops out near 40 MB/s: it reads chunks through an ordered push
consumer whose flow-control replies are sent by a task that wakes every 0.25 s. ``download``
reads the chunks with an ephemeral pull consumer in large batches instead, writes them as they
arrive, and checks size and SHA-256 against the object's metadata before it returns. A digest
mismatch deletes the partial file: a silently corrupt input would otherwise be encoded and
billed, or a corrupt result handed to a user.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import BinaryIO

from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    ObjectInfo,
)
from nats.js.errors import NotFoundError, ObjectNotFoundError

__all__ = [
    "CHUNK_SIZE_BYTES",
    "ObjectCorrupt",
    "ObjectMissing",
    "StoreFull",
    "delete_object",
    "digest_hex",
    "download",
    "iter_chunks",
    "object_info",
]

CHUNK_SIZE_BYTES = 256 * 1024  # measured best for the pull reader; must stay under max_payload
_FETCH_BATCH = 64
_FIRST_BATCH = 2  # then twice as many each time, up to _FETCH_BATCH


class ObjectMissing(LookupError):
    pass


class ObjectCorrupt(IOError):
    pass


class StoreFull(IOError):
    """The bucket holds its quota of bytes (it discards nothing old): delete objects or wait
    for them to expire."""


async def delete_object(js: JetStreamContext, bucket: str, name: str) -> None:
    """Delete an object (its chunks purged, its metadata marked deleted); gone is success."""
    store = await js.object_store(bucket)
    with contextlib.suppress(ObjectNotFoundError, NotFoundError):
        await store.delete(name)


async def object_info(js: JetStreamContext, bucket: str, name: str) -> ObjectInfo:
    """The object's metadata, in one direct get (nats-py's ``object_store`` plus ``get_info``
    take two requests, a stream-info first). Raises ObjectMissing for no such object or
    bucket, ObjectCorrupt for metadata that is not an object's."""
    meta = base64.urlsafe_b64encode(name.encode()).decode()
    try:
        msg = await js.get_last_msg(f"OBJ_{bucket}", f"$O.{bucket}.M.{meta}", direct=True)
    except NotFoundError:
        raise ObjectMissing(f"no object {name!r} in bucket {bucket!r}") from None
    except NoRespondersError:  # nobody serves direct gets of a stream that does not exist
        raise ObjectMissing(f"no object store {bucket!r}") from None
    try:
        info = ObjectInfo.from_response(json.loads(msg.data or b""))
    except (ValueError, TypeError, KeyError):
        raise ObjectCorrupt(f"object {name!r} in bucket {bucket!r}: unreadable metadata"
                            ) from None
    if info.deleted:
        raise ObjectMissing(f"no object {name!r} in bucket {bucket!r}")
    return info


async def download(
    js: JetStreamContext, bucket: str, name: str, dest: str | os.PathLike[str],
    *, max_size_bytes: int | None = None, chunk_timeout_s: float = 10.0,
) -> ObjectInfo:
    """Write object ``name`` to the file ``dest`` and verify it; returns its info.

    Raises ObjectMissing if it does not exist, ValueError if it exceeds ``max_size_bytes``
    (checked before any byte moves), ObjectCorrupt on a size or digest mismatch, and
    TimeoutError if no chunk arrives for ``chunk_timeout_s``.
    """
    info = await object_info(js, bucket, name)
    size = info.size or 0
    if max_size_bytes is not None and size > max_size_bytes:
        raise ValueError(
            f"object {name!r} is {size} bytes, over the limit of {max_size_bytes} bytes"
        )
    dest = Path(dest)
    try:
        with open(dest, "wb") as out:
            digest = await _copy_chunks(js, bucket, info, out, chunk_timeout_s)
        _verify(info, dest.stat().st_size, digest)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return info


async def _copy_chunks(
    js: JetStreamContext, bucket: str, info: ObjectInfo, out: BinaryIO, chunk_timeout_s: float,
) -> bytes:
    h = hashlib.sha256()
    async with contextlib.aclosing(iter_chunks(js, bucket, info, chunk_timeout_s)) as chunks:
        async for data in chunks:
            h.update(data)
            out.write(data)
    return h.digest()


async def iter_chunks(js: JetStreamContext, bucket: str, info: ObjectInfo,
                      chunk_timeout_s: float = 10.0) -> AsyncGenerator[bytes, None]:
    """The object's chunks in order, read in batches by an ephemeral pull consumer (removed
    when the iterator is closed, or by the server 30 s after its reader vanished); a
    one-chunk object by a direct get. Raises
    TimeoutError when no chunk arrives for ``chunk_timeout_s``. Unverified: callers check
    size and digest."""
    chunks = info.chunks or 0
    if chunks == 0:
        return
    stream = f"OBJ_{bucket}"
    if chunks == 1:  # one direct get, not a consumer made, pulled from and deleted
        with contextlib.suppress(NotFoundError):  # (a chunk gone fails the caller's check)
            only = await js.get_last_msg(stream, f"$O.{bucket}.C.{info.nuid}", direct=True)
            yield only.data or b""
        return
    consumer = f"download-{secrets.token_hex(8)}"
    await js.add_consumer(stream, ConsumerConfig(
        name=consumer,
        filter_subject=f"$O.{bucket}.C.{info.nuid}",
        ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.ALL,
        mem_storage=True,
        num_replicas=1,
        inactive_threshold=30.0,  # the server removes it if we vanish mid-download
    ))
    sub = await js.pull_subscribe_bind(consumer=consumer, stream=stream)
    try:
        received, batch = 0, _FIRST_BATCH
        while received < chunks:
            # A fetch returns when its whole batch is in: small first batches let whoever
            # relays or writes the chunks start while the rest are on their way.
            msgs = await sub.fetch(min(batch, chunks - received), timeout=chunk_timeout_s)
            batch = min(batch * 2, _FETCH_BATCH)
            for msg in msgs:
                yield msg.data
            received += len(msgs)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, consumer)


def _verify(info: ObjectInfo, size: int, digest: bytes) -> None:
    if size != (info.size or 0):
        raise ObjectCorrupt(f"object {info.name!r}: got {size} bytes, expected {info.size}")
    expected = (info.digest or "").removeprefix("SHA-256=")
    if base64.urlsafe_b64encode(digest).decode().rstrip("=") != expected.rstrip("="):
        raise ObjectCorrupt(f"object {info.name!r}: SHA-256 digest mismatch")


def digest_hex(info: ObjectInfo) -> str:
    """The object's SHA-256 as hex (the store keeps it as ``SHA-256=<base64url>``)."""
    b64 = (info.digest or "").removeprefix("SHA-256=")
    return base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
