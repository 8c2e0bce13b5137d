"""How the CLI shows events: a progress bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
from typing import TextIO

from broker.events import Cancelled, Event, Failed, Progress, Queued, Retrying, Started, Succeeded

__all__ = ["ProgressDisplay", "describe", "exit_code"]


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
        return (f"succeeded  {o.name} ({o.size_bytes / 1e6:.2f} MB, {o.duration_s:.2f}s, "
                f"{o.width}x{o.height} {o.video_codec}) by {event.encoder} in "
                f"{event.timings.total_s:.2f}s")
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
    return f"{type(event).__name__.lower()}"


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
