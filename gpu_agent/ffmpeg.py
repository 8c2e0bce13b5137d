"""Running FFmpeg: progress parsing (pure) and the child process (I/O).

FFmpeg runs with ``-progress pipe:1 -nostats``: stdout carries ``key=value`` blocks ending in
``progress=continue`` / ``progress=end``; stderr (``-loglevel error``) is drained concurrently so
a full pipe can never deadlock the child. The child gets its own process group; on timeout,
stall or cancellation the whole group is killed (SIGTERM, then SIGKILL), so no encoder is left
running and billing after its job is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "Feeder",
    "FfmpegResult",
    "ProgressParser",
    "ProgressUpdate",
    "classify_failure",
    "media_env",
    "run_capture",
    "run_ffmpeg",
]


@dataclass(frozen=True, slots=True)
class ProgressUpdate:
    media_time_s: float  # output time encoded so far
    speed: float | None  # media seconds per wall second, when FFmpeg knows it
    done: bool  # the final block (``progress=end``)


class ProgressParser:
    """Feed stdout lines; get a ProgressUpdate at the end of each block."""

    def __init__(self) -> None:
        self._block: dict[str, str] = {}

    def feed(self, line: str) -> ProgressUpdate | None:
        key, sep, value = line.strip().partition("=")
        if not sep:
            return None
        if key != "progress":
            self._block[key] = value.strip()
            return None
        block, self._block = self._block, {}
        media_time_s = max(_float(block.get("out_time_us"), scale=1e-6) or 0.0, 0.0)
        speed = _float(block.get("speed", "").removesuffix("x"))
        return ProgressUpdate(media_time_s, speed, value.strip() == "end")


def _float(value: str | None, scale: float = 1.0) -> float | None:
    try:
        return float(value) * scale if value not in (None, "", "N/A") else None  # type: ignore[arg-type]
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class FfmpegResult:
    returncode: int
    media_time_s: float  # output time of the last progress block (the output's duration)
    stderr_tail: str  # the last 20 lines FFmpeg wrote to stderr, for errors and dead letters
    stalled: bool


# Failures that are the machine's, not the job's: retry later, maybe elsewhere.
_MACHINE_TROUBLE = (
    ("OpenEncodeSessionEx failed", "encoder_busy"),  # NVENC session limit or GPU memory
    ("No capable devices found", "encoder_unavailable"),
    ("Cannot load libnvidia-encode", "encoder_unavailable"),
    ("Cannot load libcuda", "encoder_unavailable"),
    ("No space left on device", "disk_full"),
    ("Cannot allocate memory", "out_of_memory"),
)


def classify_failure(stderr: str) -> tuple[str, bool]:
    """(code, retryable) for an FFmpeg that exited non-zero, from what it said."""
    for needle, code in _MACHINE_TROUBLE:
        if needle in stderr:
            return code, True
    return "ffmpeg_failed", False


# What FFmpeg and ffprobe may see of the agent's environment: where programs, libraries, fonts
# and the GPU are, and the locale. Nothing else: the agent's own environment holds its NATS
# seed and JWT and its instance's API key, and a filter graph or a crafted input should find
# nothing there to leak.
_MEDIA_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "LD_LIBRARY_PATH")
_MEDIA_ENV_PREFIXES = ("LC_", "FONTCONFIG_", "NVIDIA_", "CUDA_", "XDG_")


def media_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a media tool runs with: an allowlist of ``environ``."""
    return {k: v for k, v in environ.items()
            if k in _MEDIA_ENV or k.startswith(_MEDIA_ENV_PREFIXES)}


# A media tool runs in a session of its own (so a kill reaches its whole group), which also
# means it outlives an agent that is SIGKILLed: an FFmpeg encoding on for minutes on a machine
# that took another job, writing into a directory nobody will clean. util-linux's setpriv
# makes the kernel SIGKILL it when the agent goes (the thread that started it: the event
# loop's, which lives as long as the agent).
_SETPRIV = shutil.which("setpriv")
_ORPHAN_GUARD = [_SETPRIV, "--pdeathsig", "KILL", "--"] if _SETPRIV else []


async def run_capture(argv: list[str], timeout_s: float) -> tuple[int, bytes, bytes]:
    """Run a short command (ffprobe, a probe encode); kill it past ``timeout_s``."""
    proc = await asyncio.create_subprocess_exec(
        *_ORPHAN_GUARD, *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True, env=media_env(os.environ),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except (TimeoutError, asyncio.CancelledError):
        await _kill_group(proc)
        raise
    return proc.returncode or 0, out, err


async def _kill_group(proc: asyncio.subprocess.Process, grace_s: float = 3.0) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


Feeder = Callable[[asyncio.StreamWriter], Awaitable[None]]


async def run_ffmpeg(
    argv: list[str],
    *,
    on_progress: Callable[[ProgressUpdate], Awaitable[None]],
    stall_timeout_s: float = 60.0,
    feed: Feeder | None = None,
    on_stderr: Callable[[str], None] | None = None,
) -> FfmpegResult:
    """Run FFmpeg to completion, reporting progress; kill it on a stall or when cancelled.

    ``argv`` must already contain ``-progress pipe:1 -nostats``. A stall is no progress block
    for ``stall_timeout_s``: a wedged encoder holds a paid GPU and its job's lease forever.
    Callers bound the total time by cancelling (``asyncio.wait_for``); cancellation kills the
    process group before it propagates. ``feed`` writes FFmpeg's stdin (raw frames) and is
    closed after it returns; if FFmpeg dies first, the feeding simply stops and the exit code
    tells why.
    """
    proc = await asyncio.create_subprocess_exec(
        *_ORPHAN_GUARD, *argv,
        stdin=asyncio.subprocess.PIPE if feed else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
        env=media_env(os.environ),
    )
    stderr_lines: list[str] = []
    stderr_task = asyncio.create_task(_drain_stderr(proc, stderr_lines, on_stderr))
    feed_failed: list[BaseException] = []  # kept apart: cancelling the task must not lose it
    feed_task = asyncio.create_task(_write_stdin(proc, feed, feed_failed)) if feed else None
    try:
        stalled, last = await _read_progress(proc, on_progress, stall_timeout_s)
        if stalled:
            await _kill_group(proc)
        await proc.wait()
        await stderr_task
        if feed_task:
            if proc.returncode:  # died early: stop rendering frames nobody reads
                feed_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed_task
            if feed_failed:  # the renderer's error, not the kill it caused, is the reason
                raise feed_failed[0]
    except BaseException:
        await _kill_group(proc)
        stderr_task.cancel()
        if feed_task:
            feed_task.cancel()
        raise
    return FfmpegResult(proc.returncode or 0, last.media_time_s,
                        "\n".join(stderr_lines), stalled)


async def _drain_stderr(proc: asyncio.subprocess.Process, tail: list[str],
                        on_stderr: Callable[[str], None] | None) -> None:
    """Read stderr to the end (a full pipe would block FFmpeg), keeping the last 20 lines."""
    assert proc.stderr
    async for raw in proc.stderr:
        line = raw.decode(errors="replace").rstrip()
        if on_stderr:
            on_stderr(line)
        tail.append(line)
        del tail[:-20]


async def _read_progress(proc: asyncio.subprocess.Process,
                         on_progress: Callable[[ProgressUpdate], Awaitable[None]],
                         stall_timeout_s: float) -> tuple[bool, ProgressUpdate]:
    """Progress blocks until stdout closes: (stalled, the last block)."""
    assert proc.stdout
    parser, last = ProgressParser(), ProgressUpdate(0.0, None, False)
    while True:
        try:
            raw = await asyncio.wait_for(proc.stdout.readline(), stall_timeout_s)
        except TimeoutError:
            return True, last
        if not raw:
            return False, last
        update = parser.feed(raw.decode(errors="replace"))
        if update is not None:
            last = update
            await on_progress(update)


async def _write_stdin(proc: asyncio.subprocess.Process, feed: Feeder,
                       failed: list[BaseException]) -> None:
    assert proc.stdin
    try:
        await feed(proc.stdin)
        proc.stdin.close()
        await proc.stdin.wait_closed()
    except (BrokenPipeError, ConnectionResetError):
        pass  # FFmpeg stopped reading: its exit code says why
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        # The frames cannot all be made: stop FFmpeg rather than let it finish a short
        # video from what it got (or wait on stdin until the stall timeout). The error is
        # recorded first: FFmpeg's exit may get this task cancelled mid-kill.
        failed.append(exc)
        await _kill_group(proc)
        raise
