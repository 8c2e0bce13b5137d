"""How the CLI shows events: a progress bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
from typing import TextIO

from broker.events import (
    Cancelled,
    Event,
    Failed,
    Progress,
    Queued,
    Requeued,
    Retrying,
    Started,
    Succeeded,
)
from broker.queries import JobStatus

__all__ = ["ProgressDisplay", "describe", "describe_status", "duration", "exit_code",
           "jobs_table"]


def describe(event: Event) -> str:
    """One human line per event."""
    if isinstance(event, Queued):
        return f"queued     {event.operation} (stream seq {event.stream_seq})"
    if isinstance(event, Started):
        return f"started    attempt {event.attempt} on {event.agent_id} with {event.encoder}"
    if isinstance(event, Progress):
        speed = f" at {event.speed:.2f}x" if event.speed else ""
        return f"progress   {event.percent:5.1f}% ({event.media_time_s:.1f}s encoded{speed})"
    if isinstance(event, Succeeded):
        o = event.output
        how = (f"from the cache: the result of job {event.cached_from}" if event.cached
               else f"in {event.timings.total_s:.2f}s")
        return (f"succeeded  {o.name} ({o.size_bytes / 1e6:.2f} MB, {o.duration_s:.2f}s, "
                f"{o.width}x{o.height} {o.video_codec}) by {event.encoder} {how}")
    if isinstance(event, Failed):
        return f"failed     [{event.error.code}] {event.error.message}"
    if isinstance(event, Retrying):
        return (f"retrying   attempt {event.attempt} hit [{event.error.code}] "
                f"{event.error.message}; again in {event.retry_in_s:.0f}s")
    if isinstance(event, Cancelled):
        why = f": {event.reason}" if event.reason else ""
        ran = (f" (attempt {event.attempt} on {event.agent_id} stopped, ${event.cost_usd:.4f})"
               if event.agent_id else " before it started")
        return f"cancelled{why}{ran}"
    if isinstance(event, Requeued):
        return (f"requeued   from its dead letter: attempt {event.attempts_before + 1} "
                "comes next")
    return f"{type(event).__name__.lower()}"


def duration(seconds: float) -> str:
    """A span for people: ``42s``, ``3m07s``, ``1h05m``."""
    minutes, secs = divmod(max(0, int(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def describe_status(status: JobStatus, now: float) -> str:
    """``vidfleet job``: one line saying where the job is, then its details."""
    head = {
        "queued": "queued" + (f", {status.position} job(s) ahead"
                              if status.position is not None else ""),
        "running": f"running attempt {status.attempt} on {status.agent_id}"
                   + (f" with {status.encoder}" if status.encoder else "")
                   + (f", {status.percent:.1f}%" if status.percent is not None else ""),
        "waiting": f"waiting to run again (attempt {status.attempt} on {status.agent_id} "
                   "ended without an outcome)",
        "succeeded": f"succeeded: {status.output.name if status.output else ''}",
        "failed": (f"failed: [{status.error.code}] {status.error.message}" if status.error
                   else "failed") + ("\n  kept as a dead letter: `vidfleet dlq show` to look, "
                                     "`vidfleet dlq retry` to run it again"
                                     if status.dead_letter else ""),
        "cancelled": "cancelled" + (f": {status.reason}" if status.reason else ""),
    }[status.state]
    lines = [f"{status.job_id}  {status.operation}  {head}"]
    if status.queued_at is not None:
        lines.append(f"  queued     {duration(now - status.queued_at)} ago")
    if status.started_at is not None:
        lines.append(f"  started    {duration(now - status.started_at)} ago")
    if status.ended_at is not None:
        lines.append(f"  ended      {duration(now - status.ended_at)} ago")
    if status.state in ("queued", "waiting") and status.queued_at is not None:
        lines.append(f"  waiting    {duration(now - status.queued_at)} so far")
    lines.append(f"  cost       ${status.cost_usd:.4f}"
                 + (" so far" if status.state == "running" else ""))
    for hook in status.webhooks:
        said = f"HTTP {hook.status}" if hook.status is not None else hook.error
        outcome = "delivered" if hook.ok else ("given up" if hook.final else "failed")
        lines.append(f"  webhook    {duration(now - hook.at)} ago {hook.kind} to {hook.url}: "
                     f"{outcome} ({said})")
    return "\n".join(lines)


def jobs_table(found: list[JobStatus], now: float) -> str:
    """``vidfleet jobs``: one row per job, newest first."""
    if not found:
        return "no jobs"
    rows = [("JOB", "OPERATION", "STATE", "QUEUED", "ATTEMPT", "AGENT", "PROGRESS", "COST")]
    for s in found:
        rows.append((s.job_id, s.operation, s.state,
                     f"{duration(now - s.queued_at)} ago" if s.queued_at is not None else "-",
                     str(s.attempt or "-"), s.agent_id or "-",
                     f"{s.percent:.0f}%" if s.percent is not None else "-",
                     f"${s.cost_usd:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def exit_code(last: Event | None) -> int:
    """The CLI's exit code for a job that ended with ``last``: 0 succeeded, 1 failed (or no
    outcome), 4 cancelled."""
    if isinstance(last, Succeeded):
        return 0
    return 4 if isinstance(last, Cancelled) else 1


class ProgressDisplay:
    """Redraws one bar line on a TTY; prints a line per event (progress every 10 %) otherwise."""

    WIDTH = 30

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._last_decile = -1
        self._bar_shown = False

    def show(self, event: Event) -> None:
        if isinstance(event, Progress):
            self._progress(event)
            return
        if self._bar_shown:
            self.stream.write("\n")
            self._bar_shown = False
        self.stream.write(describe(event) + "\n")
        self.stream.flush()

    def _progress(self, event: Progress) -> None:
        if self.tty:
            filled = int(self.WIDTH * event.percent / 100)
            speed = f" {event.speed:.2f}x" if event.speed else ""
            self.stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                              f"{event.percent:5.1f}%{speed}   ")
            self._bar_shown = True
        elif int(event.percent // 10) > self._last_decile:
            self._last_decile = int(event.percent // 10)
            self.stream.write(describe(event) + "\n")
        self.stream.flush()
