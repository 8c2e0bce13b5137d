"""A tenant's dead letters: listed, shown, run again or dropped (``deadletters.<tenant>.>``,
broker/dead_letters.py).

A retry is a sequence that a crash may cut anywhere, so each step can be repeated: the kept
inputs are put back (skipped when already there), the job state goes from that ``Failed`` to
``Requeued`` by compare-and-set (a second retry, or a cancel, cannot slip in), the ``requeued``
event and the JOBS message carry message ids of that requeue (a repeat is a duplicate), and the
letter goes last. A retry asked again after a crash finds the job requeued by this same letter
and finishes the steps.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable

import msgspec
from loguru import logger
from nats.js import JetStreamContext
from nats.js.errors import APIError

from broker.dead_letters import (
    ATTEMPTS_BEFORE_HEADER,
    FAILURES_BEFORE_HEADER,
    DeadLetter,
    DeadLetterReply,
    DeadLettersReply,
    decode_dead_letters_query,
    kept_input_name,
)
from broker.events import Requeued, encode_event
from broker.jobs import decode_job
from broker.jobstate import JobStates
from broker.objects import ObjectMissing, StoreFull, digest_hex, object_info
from broker.subjects import (
    CONTROLLER_PUBLISHER,
    DEAD_LETTER_INPUTS_BUCKET,
    WEBHOOK_JOBS_BUCKET,
    event_subject,
    inputs_bucket,
    job_subject,
    parse_dead_letter_subject,
    validate_job_id,
    validate_tenant,
)
from broker.webhooks import job_url_key
from controller.dead_letters import DeadLetters, copy_object

__all__ = ["DeadLetterDesk"]

_MAX_LIMIT = 500
_PER_SUBJECT_LIMIT = 10077  # JOBS holds a copy of this job already


class DeadLetterDesk:
    def __init__(self, *, js: JetStreamContext, letters: DeadLetters, states: JobStates,
                 clock: Callable[[], float] = time.time) -> None:
        self._js = js
        self._letters = letters
        self._states = states
        self._clock = clock
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)

    async def answer(self, subject: str, body: bytes) -> DeadLetterReply | DeadLettersReply:
        try:
            tenant, action, job_id = parse_dead_letter_subject(subject)
            validate_tenant(tenant)
        except ValueError as exc:
            return DeadLetterReply(ok=False, code="invalid", message=str(exc))
        if action == "list" and not job_id:
            return await self._list(tenant, body)
        if action not in ("get", "retry", "drop"):
            return DeadLetterReply(ok=False, code="invalid", message=(
                f"unknown dead letter request {action!r}: list, get, retry or drop"))
        try:
            validate_job_id(job_id)
        except ValueError as exc:
            return DeadLetterReply(ok=False, code="invalid_job_id", message=str(exc))
        key = (tenant, job_id)
        async with self._locks[key]:
            try:
                found = await self._letters.get(tenant, job_id)
                if found is None:
                    return DeadLetterReply(ok=False, code="not_found", message=(
                        f"job {job_id} has no dead letter: it never failed for good, or was "
                        "retried or dropped, or its letter expired"))
                letter, _ = found
                if action == "get":
                    return DeadLetterReply(ok=True, letter=letter)
                if action == "drop":
                    await self._letters.forget(letter)
                    logger.bind(tenant=tenant, job_id=job_id).info("dead letter dropped")
                    return DeadLetterReply(ok=True, letter=letter)
                return await self._retry(letter)
            finally:
                if not self._locks[key].locked():
                    self._locks.pop(key, None)

    async def _list(self, tenant: str, body: bytes) -> DeadLettersReply:
        try:
            query = decode_dead_letters_query(body)
        except ValueError as exc:
            return DeadLettersReply(ok=False, code="invalid",
                                    message=f"unreadable dead letter query: {exc}")
        limit = max(1, min(query.limit, _MAX_LIMIT))
        letters = sorted(await self._letters.of_tenant(tenant), key=lambda x: -x.failed_at)
        brief = [_brief(letter) for letter in letters[:limit]]
        return DeadLettersReply(ok=True, letters=brief, truncated=len(letters) > limit)

    async def _retry(self, letter: DeadLetter) -> DeadLetterReply:
        log = logger.bind(tenant=letter.tenant, job_id=letter.job_id)
        if letter.inputs_state == "keeping":
            return DeadLetterReply(ok=False, code="busy", message=(
                "its inputs are still being kept; retry in a moment"))
        if not letter.body:
            return DeadLetterReply(ok=False, code="conflict", message=(
                "the job's body was not kept: submit it anew under a new id"))
        if (refused := await self._restore_inputs(letter)) is not None:
            return refused
        requeued = Requeued(job_id=letter.job_id, tenant=letter.tenant, at=self._clock(),
                            operation=letter.operation, attempts_before=letter.attempts)
        if not await self._states.requeue(requeued):
            return DeadLetterReply(ok=False, code="conflict", message=(
                f"job {letter.job_id} is no longer the failure this letter kept"))
        marker = f"{letter.tenant}.{letter.job_id}.requeue.{letter.attempts}"
        await self._js.publish(
            event_subject(letter.tenant, letter.job_id, "requeued", CONTROLLER_PUBLISHER),
            # (Not the JOBS message's id: the server copies that into EVENTS as the queued
            # event, which would then be dropped as a duplicate of this one.)
            encode_event(requeued), headers={"Nats-Msg-Id": f"{marker}.event"})
        await self._note_webhook(letter)
        try:
            await self._js.publish(
                job_subject(letter.tenant, letter.operation, letter.job_id),
                letter.body.encode(), headers={
                    "Nats-Msg-Id": marker, ATTEMPTS_BEFORE_HEADER: str(letter.attempts),
                    FAILURES_BEFORE_HEADER: str(letter.failures)})
        except APIError as exc:
            if exc.err_code != _PER_SUBJECT_LIMIT or "per subject" not in (exc.description
                                                                            or ""):
                raise
            # A copy is queued already (resubmitted under its id): it runs as this retry.
        await self._letters.forget(letter)
        log.info("dead letter retried: attempt {n} next", n=letter.attempts + 1)
        return DeadLetterReply(ok=True, letter=letter, attempt=letter.attempts + 1)

    async def _restore_inputs(self, letter: DeadLetter) -> DeadLetterReply | None:
        """Put the job's inputs back where its agent reads them (the tenant's inputs bucket),
        from the kept copies; or say why the job cannot run again."""
        bucket = inputs_bucket(letter.tenant)
        for name in letter.inputs:
            kept = kept_input_name(letter.tenant, letter.job_id, name)
            try:
                copy = await object_info(self._js, DEAD_LETTER_INPUTS_BUCKET, kept)
            except ObjectMissing:
                copy = None
            try:
                there = await object_info(self._js, bucket, name)
            except ObjectMissing:
                there = None
            if there is not None and (copy is None or digest_hex(there) == digest_hex(copy)):
                continue
            if copy is None:
                return DeadLetterReply(ok=False, code="inputs_missing", message=(
                    f"input {name!r} is gone ({letter.inputs_note or 'not kept'}): upload "
                    "it again and submit the job under a new id"))
            try:
                await copy_object(self._js, DEAD_LETTER_INPUTS_BUCKET, kept, bucket, name)
            except StoreFull as exc:
                return DeadLetterReply(ok=False, code="inputs_quota", message=str(exc))
        return None

    async def _note_webhook(self, letter: DeadLetter) -> None:
        """The job's own webhook, noted again (the first note may have expired by now)."""
        try:
            webhook = decode_job(letter.operation, letter.body.encode()).webhook
        except (LookupError, ValueError):
            return
        if webhook:
            urls = await self._js.key_value(WEBHOOK_JOBS_BUCKET)
            await urls.put(job_url_key(letter.tenant, letter.job_id), webhook.encode())


def _brief(letter: DeadLetter) -> DeadLetter:
    """A letter for a listing: without its body and stderr tail (ask for the one letter)."""
    return msgspec.structs.replace(letter, body="", error=msgspec.structs.replace(
        letter.error, stderr_tail=""))
