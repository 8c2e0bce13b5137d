"""A tenant's dead letters from Python: its jobs that failed for good, kept with their reason,
FFmpeg's last words and their inputs, to be run again once the cause is fixed (or dropped).

    letters, more = await vf.dead_letters.letters()
    letter = await vf.dead_letters.get("talk-42")       # with body and stderr tail
    attempt = await vf.dead_letters.retry("talk-42")    # queued again, same id
    await vf.dead_letters.drop("talk-42")

The protocol is in broker/dead_letters.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec

from broker.dead_letters import (
    DeadLetter,
    DeadLetterReply,
    DeadLettersQuery,
    decode_dead_letter_reply,
    decode_dead_letters_reply,
    encode,
)
from broker.subjects import dead_letter_subject

__all__ = ["DeadLetterError", "DeadLetters", "NoDeadLetter"]


class DeadLetterError(RuntimeError):
    """The controller could not do it; ``code`` says why (broker/dead_letters.py)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class NoDeadLetter(DeadLetterError, LookupError):
    """No letter for that job: it never failed for good, or was retried, dropped or expired."""


Ask = Callable[[str, bytes], Awaitable[bytes]]


class DeadLetters:
    def __init__(self, ask: Ask, tenant: str) -> None:
        """``ask(subject, body)``: a request to the controller, the answer's bytes."""
        self._ask = ask
        self._tenant = tenant

    async def letters(self, *, limit: int = 100) -> tuple[list[DeadLetter], bool]:
        """The tenant's dead letters, newest first, without body and stderr tail (``get``
        has them); and whether there were more than ``limit``."""
        answer = await self._ask(dead_letter_subject(self._tenant, "list"),
                                 encode(DeadLettersQuery(limit=limit)))
        reply = decode_dead_letters_reply(answer)
        if not reply.ok:
            raise DeadLetterError(f"no dead letters ({reply.code}): {reply.message}",
                                  reply.code)
        return reply.letters, reply.truncated

    async def get(self, job_id: str) -> DeadLetter:
        """The whole letter. Raises NoDeadLetter."""
        letter = (await self._one("get", job_id)).letter
        assert letter is not None
        return letter

    async def retry(self, job_id: str) -> int:
        """Queue the job again under its own id; returns the number its next attempt will
        have (attempts continue from the ones before). Its inputs are put back from the kept
        copies first. Raises NoDeadLetter, or DeadLetterError with ``code`` ``busy`` (its
        inputs are still being kept: try again), ``inputs_missing``, ``inputs_quota`` or
        ``conflict``."""
        return (await self._one("retry", job_id)).attempt

    async def drop(self, job_id: str) -> DeadLetter:
        """Delete the letter and its kept inputs (the job stays failed). Raises
        NoDeadLetter."""
        letter = (await self._one("drop", job_id)).letter
        assert letter is not None
        return letter

    async def _one(self, action: str, job_id: str) -> DeadLetterReply:
        answer = await self._ask(dead_letter_subject(self._tenant, action, job_id), b"")
        try:
            reply = decode_dead_letter_reply(answer)
        except msgspec.DecodeError:
            raise DeadLetterError(f"the controller's answer is unreadable: {answer[:80]!r}") \
                from None
        if reply.code == "not_found":
            raise NoDeadLetter(reply.message, reply.code)
        if not reply.ok:
            raise DeadLetterError(f"dead letter {job_id}: {action} refused ({reply.code}): "
                                  f"{reply.message}", reply.code)
        return reply
