"""The agent's one exception family: every job failure is classified where it is raised.

``final`` failures mean the job itself is bad (its input, its parameters): the agent publishes a
failed event and ``term()``s it, because running it again would only fail again and bill again.
Retryable failures mean this machine or the network had trouble: the job is ``nak``ed with a
delay and another attempt (maybe on another machine) runs it. Misclassifying a bad job as
retryable burns every attempt's GPU time; misclassifying trouble as final loses a good job.
"""

from __future__ import annotations

import errno

__all__ = ["JobFailure", "backoff_s", "classify", "invalid_input", "retryable"]


class JobFailure(Exception):
    def __init__(self, code: str, message: str, *, retryable: bool = False,
                 retry_delay_s: float | None = None, stderr_tail: str = "") -> None:
        """``retry_delay_s`` None: the agent's backoff for the attempt decides.
        ``stderr_tail``: what the failing tool last said, scrubbed (kept with the job)."""
        super().__init__(message)
        self.code = code
        self.message = message
        self.stderr_tail = stderr_tail
        self.retryable = retryable
        self.retry_delay_s = retry_delay_s


def invalid_input(message: str) -> JobFailure:
    return JobFailure("invalid_input", message)


def retryable(code: str, message: str, delay_s: float | None = None) -> JobFailure:
    return JobFailure(code, message, retryable=True, retry_delay_s=delay_s)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def classify(exc: BaseException) -> JobFailure:
    """What an exception the code did not classify where it was raised means for the job.
    Exception groups (a TaskGroup's) are looked into: their first classified leaf wins, so a
    download that filled the disk reads as ``disk_full``, not "unhandled errors in a
    TaskGroup". A full disk is the machine's trouble (retryable: another machine may have
    room); anything else is a bug, retried, then given up on loudly."""
    leaves = _leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, JobFailure):
            return leaf
    for leaf in leaves:
        if isinstance(leaf, OSError) and leaf.errno in _DISK_FULL:
            return retryable("disk_full", f"the machine's disk is full ({leaf.strerror}): the "
                             "job's inputs and output must fit in its work directory")
    first = leaves[0]
    return JobFailure("internal_error", f"agent error: {type(first).__name__}: {first}",
                      retryable=True)


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def backoff_s(attempt: int, base_s: float, cap_s: float = 300.0) -> float:
    """Delay before the next attempt: base, 2x, 4x ... capped. A hot retry loop on a broken
    dependency would otherwise burn every attempt within seconds."""
    return min(cap_s, base_s * 2 ** max(attempt - 1, 0))
