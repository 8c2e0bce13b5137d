"""Jobs that failed for good, kept: KV ``deadletters`` and a copy of their inputs.

Whoever fails a job for good (the dispatcher on a holder's final failure, the reaper when
deliveries ran out) calls ``keep`` before the job's message leaves JOBS: the message is the only
copy of its body. The letter is small and written at once; its ``obj:`` inputs are copied after
by the keeper (``run``), which watches the bucket, so a restart resumes copies left half done
and a slow copy of a large input never holds up the agent's report. The protocol is in
broker/dead_letters.py; retry, drop and listing are controller/dead_letter_desk.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping

import msgspec
import nats.errors
from loguru import logger
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from broker.dead_letters import (
    DeadLetter,
    decode_dead_letter,
    encode,
    kept_input_name,
    requeue_offsets,
    scrub_log_tail,
)
from broker.events import Failed
from broker.jobs import inputs_named
from broker.jobstate import retryable_failures
from broker.object_writes import ObjectWriter
from broker.objects import (
    ObjectCorrupt,
    ObjectMissing,
    StoreFull,
    delete_object,
    digest_hex,
    iter_chunks,
    object_info,
)
from broker.subjects import (
    DEAD_LETTER_INPUTS_BUCKET,
    DEAD_LETTERS_BUCKET,
    inputs_bucket,
    job_key,
)

__all__ = ["DeadLetters", "copy_object"]


class DeadLetters:
    def __init__(self, js: JetStreamContext, *, tenant_max_bytes: int = 2**30,
                 clock: Callable[[], float] = time.time) -> None:
        """``tenant_max_bytes``: what one tenant's kept inputs may hold, so a tenant whose jobs
        all fail cannot take the store from the others."""
        self._js = js
        self._tenant_max_bytes = tenant_max_bytes
        self._clock = clock
        self._kv: KeyValue | None = None
        self._max_age_s = 7 * 86400.0

    async def open(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._js.key_value(DEAD_LETTERS_BUCKET)
            self._max_age_s = (await self._kv.status()).ttl or self._max_age_s
        return self._kv

    async def get(self, tenant: str, job_id: str) -> tuple[DeadLetter, int] | None:
        """The letter and its revision, or None."""
        kv = await self.open()
        try:
            entry = await kv.get(job_key(tenant, job_id))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        try:
            return decode_dead_letter(entry.value), entry.revision or 0
        except ValueError as exc:
            logger.error("dead letter {tenant}/{job_id} unreadable: {error}", tenant=tenant,
                         job_id=job_id, error=str(exc))
            return None

    async def of_tenant(self, tenant: str) -> list[DeadLetter]:
        """Every letter of ``tenant``: one read of its keys (nats-py's ``keys(filters=)``
        reads the whole bucket and matches substrings)."""
        kv = await self.open()
        watcher = await kv.watch(f"{tenant}.*", ignore_deletes=True)
        letters = []
        try:
            while (entry := await watcher.updates(timeout=10.0)) is not None:
                with contextlib.suppress(ValueError):
                    letters.append(decode_dead_letter(entry.value or b""))
        finally:
            with contextlib.suppress(nats.errors.Error):
                await watcher.stop()
        return letters

    async def count(self) -> int:
        """How many letters are kept (every key's latest header; deleted ones left out)."""
        kv = await self.open()
        watcher = await kv.watch(">", headers_only=True, ignore_deletes=True)
        n = 0
        try:
            while await watcher.updates(timeout=10.0) is not None:
                n += 1
        finally:
            with contextlib.suppress(nats.errors.Error):
                await watcher.stop()
        return n

    async def keep(self, *, operation: str, body: bytes | None,
                   headers: Mapping[str, str] | None, failed: Failed) -> None:
        """Keep a job that just failed for good (idempotent: the same failure kept again
        changes nothing). ``body`` None: the job's message is gone, and the letter cannot
        be retried. Raises nats errors: the caller must not drop the job's message before
        its letter is written."""
        kv = await self.open()
        key = job_key(failed.tenant, failed.job_id)
        existing = await self.get(failed.tenant, failed.job_id)
        if existing is not None and existing[0].attempts == failed.attempt:
            return
        if body is None:
            logger.error("job {tenant}/{job_id} failed and its body is gone: its dead letter "
                         "cannot be retried", tenant=failed.tenant, job_id=failed.job_id)
            body = b""
        inputs = list(inputs_named(operation, body))
        error = msgspec.structs.replace(failed.error,
                                        stderr_tail=scrub_log_tail(failed.error.stderr_tail))
        letter = DeadLetter(
            tenant=failed.tenant, job_id=failed.job_id, operation=operation,
            body=body.decode("utf-8", errors="replace"), error=error,
            attempts=failed.attempt, failed_at=failed.at,
            failures=max(requeue_offsets(headers)[1],
                         await retryable_failures(self._js, failed.tenant, failed.job_id)),
            expires_at=failed.at + self._max_age_s, cost_usd=failed.cost_usd,
            inputs=inputs, inputs_state="keeping" if inputs else "none")
        await kv.put(key, encode(letter))
        logger.bind(tenant=failed.tenant, job_id=failed.job_id).info(
            "job kept as a dead letter ({code})", code=failed.error.code)

    async def forget(self, letter: DeadLetter) -> None:
        """Delete a letter and its kept inputs (a retry or a drop)."""
        kv = await self.open()
        with contextlib.suppress(KeyNotFoundError):
            await kv.delete(job_key(letter.tenant, letter.job_id))
        await self._delete_copies(letter)

    async def _delete_copies(self, letter: DeadLetter) -> None:
        for name in letter.inputs:
            await delete_object(self._js, DEAD_LETTER_INPUTS_BUCKET,
                                kept_input_name(letter.tenant, letter.job_id, name))

    # -- the keeper -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Copy the inputs of every letter that waits for them, until ``stop``: those on
        record first (a previous controller's, left half done), then each new one."""
        kv = await self.open()
        while not stop.is_set():
            try:
                watcher = await kv.watch(">")
                try:
                    while not stop.is_set():
                        with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
                            entry = await watcher.updates(timeout=1.0)
                            if entry is not None and entry.value:
                                await self._keep_inputs_of(entry.value, entry.revision or 0)
                finally:
                    with contextlib.suppress(nats.errors.Error):
                        await watcher.stop()
            except asyncio.CancelledError:
                raise
            except Exception:  # never ends the keeper: a letter's inputs would wait forever
                logger.exception("keeping dead letters' inputs failed; going on in 1 s")
                await asyncio.sleep(1.0)

    async def _keep_inputs_of(self, data: bytes, revision: int) -> None:
        try:
            letter = decode_dead_letter(data)
        except ValueError:
            return
        if letter.inputs_state != "keeping":
            return
        kept, note = await self._copy_inputs(letter)
        done = msgspec.structs.replace(letter, inputs_state="kept" if not note else "lost",
                                       inputs_bytes=kept, inputs_note=note)
        kv = await self.open()
        try:
            await kv.update(job_key(letter.tenant, letter.job_id), encode(done), last=revision)
        except KeyWrongLastSequenceError:  # dropped or retried meanwhile: the copies go
            if await self.get(letter.tenant, letter.job_id) is None:
                await self._delete_copies(letter)
            return
        logger.bind(tenant=letter.tenant, job_id=letter.job_id).info(
            "dead letter's inputs: {state} ({n} bytes){note}", state=done.inputs_state, n=kept,
            note=f": {note}" if note else "")

    async def _copy_inputs(self, letter: DeadLetter) -> tuple[int, str]:
        """Copy each input; (bytes kept, "" or why not all of them were)."""
        source = inputs_bucket(letter.tenant)
        others = sum(other.inputs_bytes for other in await self.of_tenant(letter.tenant)
                     if other.job_id != letter.job_id)
        kept = 0
        for name in letter.inputs:
            try:
                info = await object_info(self._js, source, name)
            except ObjectMissing:
                return kept, f"input {name!r} had expired before it could be kept"
            if others + kept + (info.size or 0) > self._tenant_max_bytes:
                return kept, (f"input {name!r} would take the tenant's kept inputs past "
                              f"{self._tenant_max_bytes} bytes")
            try:
                await copy_object(self._js, source, name, DEAD_LETTER_INPUTS_BUCKET,
                                  kept_input_name(letter.tenant, letter.job_id, name))
            except StoreFull:
                return kept, "the dead letters' input store is full"
            except (ObjectMissing, ObjectCorrupt) as exc:
                return kept, f"input {name!r} could not be copied: {exc}"
            kept += info.size or 0
        return kept, ""


async def copy_object(js: JetStreamContext, source: str, name: str, dest: str,
                      dest_name: str) -> None:
    """Copy an object between buckets, verified: the copy's SHA-256 must be the source's, or
    it is removed and ObjectCorrupt raised. An object already at ``dest_name`` is replaced."""
    info = await object_info(js, source, name)
    await delete_object(js, dest, dest_name)
    writer = ObjectWriter(js, dest, dest_name)
    try:
        async with contextlib.aclosing(iter_chunks(js, source, info)) as chunks:
            async for chunk in chunks:
                await writer.append(chunk)
        if writer.sha256_hex() != digest_hex(info) or writer.size != (info.size or 0):
            raise ObjectCorrupt(f"the copy of {name!r} differs from it")
        await writer.commit(info.description)
    except BaseException:
        await writer.abort()
        raise
