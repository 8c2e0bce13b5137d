"""The result cache's controller side (protocol in broker/result_cache.py): the gateway's key
and lookup, serving a hit, and the dispatcher's records of results and of the fleet's build.

A hit is served only when every part still holds at that moment: the entry's build is the one
the fleet runs now, and its result object is still in the tenant's bucket with the SHA-256 the
entry names (a tenant may have deleted it, or it expired). Serving a stale or missing result
would hand a user a job that "succeeded" with nothing to download.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime

import nats.errors
from loguru import logger
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from broker.dispatch import Lease
from broker.events import Succeeded, Timings, encode_event
from broker.jobs import JobRequest, object_inputs
from broker.jobstate import JobStates
from broker.objects import digest_hex
from broker.result_cache import (
    BUILD_KEY,
    CacheEntry,
    cache_key,
    cacheable,
    decode_entry,
    encode,
    entry_key,
)
from broker.subjects import (
    CONTROLLER_PUBLISHER,
    JOBSTATE_BUCKET,
    QUEUE_PUBLISHER,
    RESULT_CACHE_BUCKET,
    event_subject,
    inputs_bucket,
    job_subject,
    results_bucket,
)

__all__ = ["ResultCache"]


class ResultCache:
    def __init__(self, js: JetStreamContext, *, clock: Callable[[], float] = time.time) -> None:
        self._js = js
        self._clock = clock
        self._kv: KeyValue | None = None
        self._states: JobStates | None = None
        self._stores: dict[str, ObjectStore] = {}
        self._build = ""  # the last build noted here
        self._noted_at = float("-inf")

    async def open(self) -> None:
        self._kv = await self._js.key_value(RESULT_CACHE_BUCKET)
        self._states = JobStates(await self._js.key_value(JOBSTATE_BUCKET))

    # -- the gateway's side ----------------------------------------------------------------

    async def key_of(self, tenant: str, operation: str, job: JobRequest) -> str | None:
        """The job's cache key, or None (not cacheable, or an input is missing: the job then
        runs and fails as it would have)."""
        if not cacheable(job):
            return None
        digests = {}
        for name in object_inputs(job):
            digest = await self._digest(inputs_bucket(tenant), name)
            if digest is None:
                return None
            digests[name] = digest
        return cache_key(operation, job, digests)

    async def hit(self, tenant: str, key: str) -> CacheEntry | None:
        """The entry to serve for ``key``, if every part of it still holds."""
        assert self._kv is not None, "open() first"
        try:
            entry = decode_entry((await self._kv.get(entry_key(tenant, key))).value or b"")
            build = (await self._kv.get(BUILD_KEY)).value or b""
        except (KeyNotFoundError, ValueError):
            return None
        if entry.build != build.decode():
            return None
        if await self._digest(results_bucket(tenant), entry.output.name) != entry.output.sha256:
            with contextlib.suppress(KeyNotFoundError):
                await self._kv.delete(entry_key(tenant, key))
            return None
        return entry

    async def serve(self, tenant: str, operation: str, job_id: str,
                    entry: CacheEntry) -> bool:
        """Announce the job as queued and succeeded with the entry's result. False (nothing
        done) when the job id is known already: a resubmit is a duplicate, not a new job."""
        assert self._states is not None
        if await self._states.get(tenant, job_id) is not None:
            return False
        now = self._clock()
        stamp = datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z")
        await self._js.publish(event_subject(tenant, job_id, "queued", QUEUE_PUBLISHER), b"",
                               headers={"Nats-Subject": job_subject(tenant, operation, job_id),
                                        "Nats-Sequence": "0", "Nats-Time-Stamp": stamp})
        done = Succeeded(job_id=job_id, tenant=tenant, at=now, operation=operation,
                         agent_id=CONTROLLER_PUBLISHER, attempt=0, encoder=entry.encoder,
                         output=entry.output, build=entry.build, cached=True,
                         cached_from=entry.job_id,
                         timings=Timings(queue_wait_s=0.0, fetch_s=0.0, validate_s=0.0,
                                         encode_s=0.0, upload_s=0.0, total_s=0.0))
        if await self._states.claim_terminal(done) is not None:
            return False
        await self._js.publish(event_subject(tenant, job_id, "succeeded", CONTROLLER_PUBLISHER),
                               encode_event(done))
        logger.bind(tenant=tenant, job_id=job_id).info(
            "job served from the result cache (the result of {other})", other=entry.job_id)
        return True

    async def _digest(self, bucket: str, name: str) -> str | None:
        store = self._stores.get(bucket)
        try:
            if store is None:
                store = self._stores[bucket] = await self._js.object_store(bucket)
            return digest_hex(await store.get_info(name))
        except (ObjectNotFoundError, NotFoundError, ValueError):
            return None

    # -- the dispatcher's side -------------------------------------------------------------

    async def note_build(self, build: str) -> None:
        """The build an agent asking for work runs: the one the next job will run on. Noted
        again hourly, or the bucket's expiry would forget a build that never changes."""
        now = self._clock()
        if build and (build != self._build or now - self._noted_at > 3600.0):
            assert self._kv is not None, "open() first"
            try:
                await self._kv.put(BUILD_KEY, build.encode())
            except nats.errors.Error as exc:  # the cache misses a little longer; work goes on
                logger.warning("build not noted: {error}", error=str(exc))
                return
            self._build, self._noted_at = build, now

    async def record(self, lease: Lease, done: Succeeded) -> None:
        """Keep a result for later identical jobs (those whose key the gateway gave)."""
        if not lease.cache_key or not done.build:
            return
        assert self._kv is not None, "open() first"
        await self._kv.put(entry_key(lease.tenant, lease.cache_key), encode(CacheEntry(
            job_id=lease.job_id, build=done.build, encoder=done.encoder, output=done.output,
            at=done.at)))
