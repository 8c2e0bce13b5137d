"""A job-arrival trace: one CSV row per job, ``arrival_s,operation,media_s``.

``arrival_s`` is seconds from the trace's start, ``media_s`` the job's media duration. How much
encoder time a job needs is a model (``WorkModel``), not part of the trace, so one trace can be
replayed under different assumptions.
"""

from __future__ import annotations

import csv
from pathlib import Path

from msgspec import Struct, field

__all__ = ["OPERATIONS", "TraceError", "TraceJob", "WorkModel", "load_trace"]

OPERATIONS = ("caption", "img2vid", "add_audio")
_HEADER = ["arrival_s", "operation", "media_s"]


class TraceError(ValueError):
    """A trace file that cannot be replayed; the message names the line."""


class TraceJob(Struct, frozen=True, kw_only=True):
    job_id: str
    arrival_s: float
    operation: str
    media_s: float


def _default_factors() -> dict[str, float]:
    # Encoder seconds per media second on the reference GPU (speed 1.0, an RTX 4090 class
    # NVENC): a caption burn decodes, draws and re-encodes every frame; img2vid renders every
    # frame on the CPU first; add_audio copies the video stream and encodes only audio.
    return {"caption": 0.25, "img2vid": 0.6, "add_audio": 0.05}


class WorkModel(Struct, frozen=True, kw_only=True):
    encode_s_per_media_s: dict[str, float] = field(default_factory=_default_factors)
    fixed_s: float = 6.0  # per job, on any GPU: fetch the input, probe it, upload the output

    def work_s(self, job: TraceJob) -> float:
        """Encoder seconds at speed 1.0; a machine of speed ``v`` takes ``work_s / v``."""
        return self.fixed_s + job.media_s * self.encode_s_per_media_s[job.operation]


def _row(number: int, row: list[str]) -> TraceJob:
    if len(row) != 3:
        raise TraceError(f"line {number}: expected 3 fields, got {len(row)}")
    try:
        arrival_s, media_s = float(row[0]), float(row[2])
    except ValueError:
        raise TraceError(f"line {number}: arrival_s and media_s must be numbers") from None
    if row[1] not in OPERATIONS:
        raise TraceError(f"line {number}: unknown operation {row[1]!r}")
    if not (arrival_s >= 0 and media_s >= 0):  # also rejects nan
        raise TraceError(f"line {number}: arrival_s and media_s must be >= 0")
    return TraceJob(job_id=f"j{number - 1}", arrival_s=arrival_s, operation=row[1],
                    media_s=media_s)


def load_trace(path: Path | str) -> tuple[TraceJob, ...]:
    """The trace's jobs in arrival order (ties keep file order); job ids are ``j<row>``."""
    with Path(path).open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != _HEADER:
        raise TraceError(f"line 1: expected the header {','.join(_HEADER)}")
    jobs = [_row(n, r) for n, r in enumerate(rows[1:], start=2) if r]
    return tuple(sorted(jobs, key=lambda j: j.arrival_s))
