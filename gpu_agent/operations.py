"""The media operations as pipelines: fetch inputs, validate, encode, check and upload output.

Each step is timed for the result. Validation happens before the encoder starts, so a bad job
costs a probe, not an encode.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nats.errors
from loguru import logger
from nats.js import JetStreamContext

from broker.events import OutputInfo, Timings
from broker.jobs import CaptionJob
from broker.objects import digest_hex, upload
from broker.subjects import RESULTS_BUCKET
from gpu_agent.config import AgentConfig
from gpu_agent.errors import JobFailure, invalid_input, retryable
from gpu_agent.ffmpeg import FfmpegResult, classify_failure, run_ffmpeg
from gpu_agent.inputs import InputFetcher
from gpu_agent.media import INPUT_FORMATS, MediaInfo, MediaLimits, probe_media, require_video
from gpu_agent.ops.caption import caption_argv
from gpu_agent.probe import EncoderProbe
from gpu_agent.progress import ProgressReporter
from gpu_agent.srt import Cue, SrtError, clip_cues, format_srt, parse_srt

__all__ = ["JobResult", "Operations", "WorkContext"]


@dataclass(frozen=True, slots=True)
class WorkContext:
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


class Operations:
    def __init__(self, *, js: JetStreamContext, config: AgentConfig, encoders: EncoderProbe,
                 fonts_dir: str, fetcher: InputFetcher,
                 clock: Callable[[], float] = time.time) -> None:
        self._js = js
        self._cfg = config
        self._encoders = encoders
        self._fonts_dir = fonts_dir
        self._fetcher = fetcher
        self._clock = clock
        self._limits = MediaLimits(max_duration_s=config.max_input_duration_s)

    def encoder_for(self, operation: str) -> str:
        return self._encoders.h264

    async def run(self, operation: str, job: object, ctx: WorkContext) -> JobResult:
        if isinstance(job, CaptionJob):
            return await self._caption(job, ctx)
        raise JobFailure("unknown_operation", f"operation {operation!r} is not implemented")

    async def _caption(self, job: CaptionJob, ctx: WorkContext) -> JobResult:
        t0 = self._clock()
        video, srt = await self._fetch_all(ctx, video=job.video, srt=job.srt)
        t_fetch = self._clock()
        cues = _parse_subtitles(srt.read_bytes())
        subs = ctx.work_dir / "subtitles.srt"
        subs.write_text(format_srt(cues), encoding="utf-8")
        output = ctx.work_dir / "output.mp4"

        def argv(source: MediaInfo | None) -> list[str]:
            return caption_argv(ffmpeg=self._cfg.ffmpeg, video_path=str(video),
                                srt_path=str(subs), output_path=str(output),
                                encoder=self._encoders.h264, fonts_dir=self._fonts_dir,
                                input_formats=INPUT_FORMATS,
                                audio_codec=source.audio_codec if source else None)

        encode = await self._encode_validated(argv, str(video), cues, ctx)
        t_encode = self._clock()
        out_info = await self._store_output(output, ctx, encode.media_time_s, encode.source)
        t_done = self._clock()
        timings = Timings(queue_wait_s=_r(ctx.started_at - ctx.queued_at),
                          fetch_s=_r(t_fetch - t0), validate_s=_r(encode.validate_s),
                          encode_s=_r(t_encode - t_fetch), upload_s=_r(t_done - t_encode),
                          total_s=_r(t_done - ctx.started_at))
        return JobResult(out_info, timings)

    async def _fetch_all(self, ctx: WorkContext, **refs: str) -> list[Path]:
        """Fetch inputs concurrently; the first failure cancels the others (no 4 GiB download
        left running into a deleted directory after its job has already failed)."""
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._fetcher.fetch(ref, ctx.work_dir / f"{label}.input",
                                                            label=label))
                         for label, ref in refs.items()]
        except* JobFailure as group:
            raise group.exceptions[0] from None
        return [t.result() for t in tasks]

    async def _encode_validated(self, argv_for: Callable[[MediaInfo | None], list[str]],
                                video: str, cues: list[Cue], ctx: WorkContext) -> _Encoded:
        """Start FFmpeg and validate the input beside it; an invalid input kills FFmpeg.

        ffprobe costs ~0.1 s of process start-up alone on a small machine, which on short jobs
        is most of the fleet's overhead; running it beside the encoder hides it. FFmpeg gets
        the same format and protocol whitelists, so starting it on an input not yet approved
        reads nothing ffprobe would not, and it is killed long before its first progress
        block when the input turns out to be bad.
        """
        first = argv_for(None)
        encode = self._start_ffmpeg(first, ctx)
        try:
            t0 = self._clock()
            info = await probe_media(self._cfg.ffprobe, video, label="video")
            require_video(info, self._limits, label="video")
            _check_cues_visible(cues, info, ctx)
            ctx.progress.expected_duration_s = info.duration_s
            validate_s = self._clock() - t0
            if (argv := argv_for(info)) != first:  # e.g. its audio cannot be copied into MP4
                await _cancel(encode)
                encode = self._start_ffmpeg(argv, ctx)
            timeout_s = max(self._cfg.ffmpeg_min_timeout_s,
                            info.duration_s * self._cfg.ffmpeg_timeout_factor)
            done, _ = await asyncio.wait({encode}, timeout=timeout_s)
            if not done:
                raise retryable("ffmpeg_timeout", f"FFmpeg ran over {timeout_s:.0f}s and "
                                "was stopped")
            result = encode.result()
        finally:
            await _cancel(encode)
        self._check_encode(result, ctx)
        return _Encoded(result.media_time_s, info, validate_s)

    def _start_ffmpeg(self, argv: list[str], ctx: WorkContext) -> asyncio.Task[FfmpegResult]:
        return asyncio.create_task(run_ffmpeg(argv, on_progress=ctx.progress,
                                              stall_timeout_s=self._cfg.stall_timeout_s))

    def _check_encode(self, result: FfmpegResult, ctx: WorkContext) -> None:
        if result.stalled:
            raise retryable("ffmpeg_stalled", f"FFmpeg made no progress for "
                            f"{self._cfg.stall_timeout_s:.0f}s and was stopped")
        if result.returncode < 0:
            raise retryable("ffmpeg_killed", f"FFmpeg was killed by signal {-result.returncode}")
        if result.returncode != 0:
            detail = result.stderr_tail.replace(str(ctx.work_dir), "<job>") or "no message"
            code, transient = classify_failure(result.stderr_tail)
            raise JobFailure(code, f"FFmpeg failed (exit {result.returncode}): {detail}",
                             retryable=transient)
        if result.media_time_s <= 0:
            raise retryable("bad_output", "FFmpeg exited 0 but encoded nothing")

    async def _store_output(self, path: Path, ctx: WorkContext, media_time_s: float,
                            source: MediaInfo) -> OutputInfo:
        """Upload the output. Its facts come from the encode itself (FFmpeg's final output
        time; caption keeps the frame size) rather than a second ffprobe, which costs ~0.1 s
        of process start-up per job on a small machine."""
        name = f"{ctx.job_id}/{ctx.attempt}/{path.name}"
        try:
            stored = await upload(self._js, RESULTS_BUCKET, name, path)
        except (nats.errors.Error, OSError) as exc:
            raise retryable("upload_failed", f"uploading the output failed: {exc}") from None
        return OutputInfo(bucket=RESULTS_BUCKET, name=name, size_bytes=stored.size or 0,
                          sha256=digest_hex(stored), duration_s=round(media_time_s, 3),
                          width=source.width, height=source.height, video_codec="h264",
                          container="mp4")


@dataclass(frozen=True, slots=True)
class _Encoded:
    media_time_s: float
    source: MediaInfo
    validate_s: float


async def _cancel(task: asyncio.Task[FfmpegResult]) -> None:
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _parse_subtitles(data: bytes) -> list[Cue]:
    try:
        return parse_srt(data)
    except SrtError as exc:
        raise invalid_input(f"srt: {exc}") from None


def _check_cues_visible(cues: list[Cue], info: MediaInfo, ctx: WorkContext) -> None:
    """Cues past the video's end are a warning (libass never shows them); none visible is an
    error, because the job would quietly burn nothing."""
    kept, clipped = clip_cues(cues, info.duration_s)
    if not kept:
        raise invalid_input(f"srt: every cue starts after the video ends "
                            f"({info.duration_s:.2f}s)")
    if clipped:
        logger.bind(job_id=ctx.job_id).warning(
            "{n} subtitle cue(s) run past the video's end ({d:.2f}s)", n=clipped,
            d=info.duration_s)


def _r(seconds: float) -> float:
    return round(max(seconds, 0.0), 3)
