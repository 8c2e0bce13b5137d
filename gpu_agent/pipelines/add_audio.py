"""add_audio: both inputs probed, then one FFmpeg run that copies the video."""

from __future__ import annotations

import asyncio
import dataclasses

from loguru import logger

from broker.jobs import AddAudioJob
from gpu_agent.errors import invalid_input
from gpu_agent.media import AUDIO_FORMATS, MediaInfo, probe_media, require_audio, require_video
from gpu_agent.operations import JobResult, Operations, WorkContext
from gpu_agent.ops.add_audio import CONTAINER_VIDEO_CODECS, add_audio_argv, target_duration_s

__all__ = ["run"]


async def run(ops: Operations, job: AddAudioJob, ctx: WorkContext) -> JobResult:
    t0 = ops.clock()
    video, audio = await ops.fetch_all(ctx, video=job.video, audio=job.audio)
    t_fetch = ops.clock()
    output = ctx.work_dir / f"output.{job.output.container}"

    async def validate() -> MediaInfo:
        v, a = await asyncio.gather(
            probe_media(ops.config.ffprobe, str(video), label="video"),
            probe_media(ops.config.ffprobe, str(audio), label="audio", formats=AUDIO_FORMATS))
        require_video(v, ops.limits, label="video")
        require_audio(a, ops.limits, label="audio")
        if v.video_codec not in CONTAINER_VIDEO_CODECS[job.output.container]:
            raise invalid_input(
                f"video: its {v.video_codec} stream is copied, and a {job.output.container} "
                f"output cannot hold it; use container "
                f"{'mp4' if job.output.container == 'webm' else 'webm'}")
        _check_offset(job, v, a)
        if job.mode == "mix" and not v.has_audio:
            logger.bind(job_id=ctx.job_id).info("video has no audio: mix acts as replace")
        return v

    def argv(info: MediaInfo | None) -> list[str]:
        assert info is not None  # not speculative: the command depends on the video's length
        return add_audio_argv(ffmpeg=ops.config.ffmpeg, video_path=str(video),
                              audio_path=str(audio), output_path=str(output), job=job,
                              video=info)

    encoded = await ops.encode(argv, validate, ctx, speculative=False)
    t_encode = ops.clock()
    # Exactly the video stream's length (FFmpeg's last progress time falls a packet short).
    encoded = dataclasses.replace(encoded, media_time_s=target_duration_s(encoded.source))
    out_info = await ops.store_output(output, ctx, encoded, job.output,
                                      encoded.source.video_codec)
    t_done = ops.clock()
    return JobResult(out_info, ops.timings(
        ctx, fetch_s=t_fetch - t0, validate_s=encoded.validate_s,
        encode_s=t_encode - t_fetch - encoded.waited_s, upload_s=t_done - t_encode,
        done_at=t_done))


def _check_offset(job: AddAudioJob, video: MediaInfo, audio: MediaInfo) -> None:
    """Refuse offsets that would leave the new audio entirely silent (the job would succeed
    and deliver nothing of what was asked)."""
    video_s = video.video_duration_s or video.duration_s
    if job.offset_s >= video_s:
        raise invalid_input(f"offset_s: the audio would start at {job.offset_s:g}s, after the "
                            f"video ends ({video_s:.2f}s)")
    if job.when_shorter == "pad" and job.offset_s < 0 and -job.offset_s >= audio.duration_s:
        raise invalid_input(f"offset_s: skipping {-job.offset_s:g}s skips all of the audio "
                            f"({audio.duration_s:.2f}s long)")
