"""The steps every media operation is made of, and the dispatch to each operation's pipeline.

A pipeline (``gpu_agent/pipelines/<operation>.py``) fetches its inputs, validates them,
encodes and stores the output using the steps here; each step is timed for the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import nats.errors

from broker.dead_letters import scrub_log_tail
from broker.events import OutputInfo, Timings
from broker.jobs import AddAudioJob, JobRequest, Output
from broker.objects import StoreFull
from broker.subjects import results_bucket
from gpu_agent.config import AgentConfig
from gpu_agent.dispatch_link import DispatchLink, UploadRefused
from gpu_agent.errors import JobFailure, retryable
from gpu_agent.ffmpeg import Feeder, FfmpegResult, classify_failure, run_ffmpeg
from gpu_agent.inputs import InputFetcher
from gpu_agent.media import MediaInfo, MediaLimits
from gpu_agent.probe import EncoderProbe
from gpu_agent.progress import ProgressReporter

__all__ = ["Encoded", "JobResult", "Operations", "WorkContext"]


@dataclass(frozen=True, slots=True)
class WorkContext:
    tenant: str
    job_id: str
    attempt: int
    work_dir: Path
    queued_at: float
    started_at: float
    progress: ProgressReporter


@dataclass(frozen=True, slots=True)
class JobResult:
    output: OutputInfo
    timings: Timings


@dataclass(frozen=True, slots=True)
class Encoded:
    media_time_s: float  # the output's duration, from FFmpeg's last progress block
    source: MediaInfo  # the validated main input
    validate_s: float
    # From encode()'s call to the start of the FFmpeg run that made the output: 0 when a
    # speculative start held, the validation (and more) when FFmpeg waited for it.
    waited_s: float = 0.0


class Operations:
    def __init__(self, *, results: DispatchLink, config: AgentConfig, encoders: EncoderProbe,
                 fonts_dir: str, fetcher: InputFetcher,
                 font_families: frozenset[str] = frozenset(),
                 clock: Callable[[], float] = time.time) -> None:
        """``results`` takes each output to the dispatcher, which stores it. ``font_families``:
        what fontconfig offers (empty: unknown, names go unchecked)."""
        self._results = results
        self.config = config
        self.encoders = encoders
        self.fonts_dir = fonts_dir
        self.font_families = font_families
        self._fetcher = fetcher
        self.clock = clock
        self.limits = MediaLimits(max_duration_s=config.max_input_duration_s)

    def encoder_for(self, job: JobRequest) -> str:
        """The video encoder for the job's output, or "copy" when the video is not re-encoded.
        Raises a final JobFailure when this agent has no working encoder for the codec."""
        if isinstance(job, AddAudioJob):
            return "copy"
        codec = job.output.video_codec
        encoder = self.encoders.encoder_for(codec)
        if encoder is None:
            raise JobFailure("unsupported_output", f"this agent has no working {codec} encoder "
                             f"(tried: {self.encoders.failures}); choose another output codec")
        return encoder

    async def fetch_all(self, ctx: WorkContext, **refs: str) -> list[Path]:
        """Fetch inputs concurrently into ``<label>.input``; the first failure cancels the
        others (no 4 GiB download left running into a deleted directory)."""
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._fetcher.fetch(ref, ctx.work_dir / f"{label}.input",
                                                            label=label, tenant=ctx.tenant,
                                                            job_id=ctx.job_id))
                         for label, ref in refs.items()]
        except* JobFailure as group:
            raise group.exceptions[0] from None
        return [t.result() for t in tasks]

    async def encode(self, argv_for: Callable[[MediaInfo | None], list[str]],
                     validate: Callable[[], Awaitable[MediaInfo]], ctx: WorkContext, *,
                     speculative: bool, on_stderr: Callable[[str], None] | None = None,
                     ) -> Encoded:
        """Validate the inputs and run FFmpeg. ``validate`` returns the main input's info
        (raising invalid-input failures); ``argv_for(info)`` builds the command.

        ``speculative``: start FFmpeg with ``argv_for(None)`` while validating, and restart it
        if the validated command differs (e.g. audio that must be re-encoded). ffprobe's
        start-up alone is ~0.1 s on a small machine, most of a short job's overhead; FFmpeg
        runs with the same whitelists and is killed long before its first progress block
        when an input turns out bad.
        """
        t0 = self.clock()
        first = argv_for(None) if speculative else None
        encode = self._start(first, ctx, on_stderr=on_stderr) if first else None
        started_at = t0
        try:
            info = await validate()
            validate_s = self.clock() - t0
            ctx.progress.expected_duration_s = info.duration_s
            if (argv := argv_for(info)) != first:
                if encode:
                    await _cancel(encode)
                started_at = self.clock()
                encode = self._start(argv, ctx, on_stderr=on_stderr)
            assert encode is not None
            result = await self._finish(encode, info.duration_s)
        finally:
            if encode:
                await _cancel(encode)
        self._check(result, ctx)
        return Encoded(result.media_time_s, info, validate_s, started_at - t0)

    async def encode_fed(self, argv: list[str], feed: Feeder, source: MediaInfo,
                         duration_s: float, ctx: WorkContext) -> Encoded:
        """Run FFmpeg on frames written to its stdin by ``feed`` (inputs already valid)."""
        ctx.progress.expected_duration_s = duration_s
        encode = self._start(argv, ctx, feed)
        try:
            result = await self._finish(encode, duration_s)
        finally:
            await _cancel(encode)
        self._check(result, ctx)
        return Encoded(result.media_time_s, source, 0.0)

    async def _finish(self, encode: asyncio.Task[FfmpegResult],
                      duration_s: float) -> FfmpegResult:
        timeout_s = max(self.config.ffmpeg_min_timeout_s,
                        duration_s * self.config.ffmpeg_timeout_factor)
        done, _ = await asyncio.wait({encode}, timeout=timeout_s)
        if not done:
            raise retryable("ffmpeg_timeout", f"FFmpeg ran over {timeout_s:.0f}s and was "
                            "stopped")
        return encode.result()

    def _start(self, argv: list[str], ctx: WorkContext, feed: Feeder | None = None,
               on_stderr: Callable[[str], None] | None = None) -> asyncio.Task[FfmpegResult]:
        return asyncio.create_task(run_ffmpeg(argv, on_progress=ctx.progress,
                                              stall_timeout_s=self.config.stall_timeout_s,
                                              feed=feed, on_stderr=on_stderr))

    def _check(self, result: FfmpegResult, ctx: WorkContext) -> None:
        if result.stalled:
            raise retryable("ffmpeg_stalled", f"FFmpeg made no progress for "
                            f"{self.config.stall_timeout_s:.0f}s and was stopped")
        if result.returncode < 0:
            raise retryable("ffmpeg_killed", f"FFmpeg was killed by signal {-result.returncode}")
        if result.returncode != 0:
            tail = scrub_log_tail(result.stderr_tail.replace(str(ctx.work_dir), "<job>"))
            detail = "\n".join(tail.splitlines()[-3:]) or "no message"
            code, transient = classify_failure(result.stderr_tail)
            raise JobFailure(code, f"FFmpeg failed (exit {result.returncode}): {detail}",
                             retryable=transient, stderr_tail=tail)
        if result.media_time_s <= 0:
            raise retryable("bad_output", "FFmpeg exited 0 but encoded nothing")

    async def store_output(self, path: Path, ctx: WorkContext, encoded: Encoded,
                           output: Output, video_codec: str) -> OutputInfo:
        """Send the output to the dispatcher, which stores it and measures it again. Its
        facts come from the encode itself (FFmpeg's final output time; the operations keep
        the frame size) rather than a second ffprobe, which costs ~0.1 s of process start-up
        per job on a small machine."""
        name = f"{ctx.job_id}/{ctx.attempt}/{path.name}"
        try:
            size, sha256 = await self._results.upload(path, tenant=ctx.tenant,
                                                      job_id=ctx.job_id, name=name)
        except StoreFull as exc:  # the tenant's quota: no other machine would do better
            raise JobFailure("results_quota_exceeded", f"the result could not be stored: "
                             f"{exc}") from None
        except (nats.errors.Error, TimeoutError, UploadRefused, OSError) as exc:
            raise retryable("upload_failed", f"uploading the output failed: "
                            f"{str(exc) or type(exc).__name__}") from None
        return OutputInfo(bucket=results_bucket(ctx.tenant), name=name, size_bytes=size,
                          sha256=sha256, duration_s=round(encoded.media_time_s, 3),
                          width=encoded.source.width, height=encoded.source.height,
                          video_codec=video_codec, container=output.container)

    @staticmethod
    def timings(ctx: WorkContext, *, fetch_s: float, validate_s: float, encode_s: float,
                upload_s: float, done_at: float) -> Timings:
        return Timings(queue_wait_s=_r(ctx.started_at - ctx.queued_at), fetch_s=_r(fetch_s),
                       validate_s=_r(validate_s), encode_s=_r(encode_s),
                       upload_s=_r(upload_s), total_s=_r(done_at - ctx.started_at))


async def _cancel(task: asyncio.Task[FfmpegResult]) -> None:
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _r(seconds: float) -> float:
    return round(max(seconds, 0.0), 3)
