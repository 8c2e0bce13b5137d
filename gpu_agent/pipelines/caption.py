"""caption: subtitles parsed strictly and rewritten by us, burned in by libass.

libass exits 0 having drawn boxes or nothing when no font has a character's glyph; it only
says so in a warning. Those warnings are collected while FFmpeg runs and fail the job
(``missing_glyphs``), naming the characters, instead of delivering a video without them.
"""

from __future__ import annotations

import dataclasses
import re

from loguru import logger

from broker.jobs import CaptionJob
from gpu_agent.errors import JobFailure, invalid_input
from gpu_agent.media import INPUT_FORMATS, MediaInfo, probe_media, require_video
from gpu_agent.operations import JobResult, Operations, WorkContext
from gpu_agent.ops.caption import caption_argv
from gpu_agent.srt import Cue, SrtError, clip_cues, format_srt, parse_subtitles

__all__ = ["run"]


async def run(ops: Operations, job: CaptionJob, ctx: WorkContext) -> JobResult:
    t0 = ops.clock()
    video, srt = await ops.fetch_all(ctx, video=job.video, srt=job.srt)
    t_fetch = ops.clock()
    cues = _parse_subtitles(srt.read_bytes())
    _check_font(job, ops)
    subs = ctx.work_dir / "subtitles.srt"
    subs.write_text(format_srt(cues), encoding="utf-8")
    output = ctx.work_dir / f"output.{job.output.container}"
    encoder = ops.encoder_for(job)

    def argv(source: MediaInfo | None) -> list[str]:
        return caption_argv(ffmpeg=ops.config.ffmpeg, video_path=str(video),
                            srt_path=str(subs), output_path=str(output), encoder=encoder,
                            fonts_dir=ops.fonts_dir, input_formats=INPUT_FORMATS,
                            output=job.output, style=job.style,
                            cuda_decode=ops.encoders.cuda_decode,
                            audio_codec=source.audio_codec if source and source.has_audio
                            else None)

    async def validate() -> MediaInfo:
        info = await probe_media(ops.config.ffprobe, str(video), label="video")
        require_video(info, ops.limits, label="video")
        _check_cues_visible(cues, info, ctx)
        return info

    missing: set[str] = set()

    def watch_stderr(line: str) -> None:
        if (m := _MISSING_GLYPH.search(line)) and int(m.group(1), 16) > 0:
            missing.add(chr(int(m.group(1), 16)))

    encoded = await ops.encode(argv, validate, ctx, speculative=True, on_stderr=watch_stderr)
    if missing:
        shown = ", ".join(f"{c} (U+{ord(c):04X})" for c in sorted(missing)[:10])
        raise JobFailure("missing_glyphs", f"no font on this agent has these characters: "
                         f"{shown}; they would show as boxes or not at all. Pick a style.font "
                         "that has them, or install one on the agents")
    t_encode = ops.clock()
    # The output lasts as long as the input (nothing is trimmed). FFmpeg's last progress time
    # is the start of the last packet: one frame short for a video-only file.
    encoded = dataclasses.replace(
        encoded, media_time_s=max(encoded.media_time_s, encoded.source.duration_s))
    out_info = await ops.store_output(output, ctx, encoded, job.output, job.output.video_codec)
    t_done = ops.clock()
    return JobResult(out_info, ops.timings(
        ctx, fetch_s=t_fetch - t0, validate_s=encoded.validate_s,
        encode_s=t_encode - t_fetch - encoded.waited_s, upload_s=t_done - t_encode,
        done_at=t_done))


_MISSING_GLYPH = re.compile(r"fontselect: failed to find any fallback with glyph 0x([0-9A-Fa-f]+)")


def _check_font(job: CaptionJob, ops: Operations) -> None:
    if ops.font_families and job.style.font not in ops.font_families:
        some = ", ".join(sorted(ops.font_families)[:12])
        raise invalid_input(f"style.font: no font family {job.style.font!r} on this agent; "
                            f"it has {len(ops.font_families)}, e.g. {some}")


def _parse_subtitles(data: bytes) -> list[Cue]:
    try:
        return parse_subtitles(data)
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
