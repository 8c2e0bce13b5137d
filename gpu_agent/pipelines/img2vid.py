"""img2vid: probe, decode the image once (fitted to the frame), render every frame at float
precision and stream the raw frames into the encoder."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from broker.jobs import Img2VidJob
from gpu_agent.errors import invalid_input
from gpu_agent.ffmpeg import run_capture
from gpu_agent.media import (
    AUDIO_FORMATS,
    MediaInfo,
    probe_media,
    require_audio,
    require_image,
)
from gpu_agent.operations import JobResult, Operations, WorkContext
from gpu_agent.ops.img2vid import (
    IMAGE_FORMATS,
    canvas_size,
    encode_argv,
    fit_argv,
    frame_boxes,
    frame_count,
    to_canvas,
)
from gpu_agent.render import KenBurnsRenderer, render_frames

__all__ = ["run"]


async def run(ops: Operations, job: Img2VidJob, ctx: WorkContext) -> JobResult:
    t0 = ops.clock()
    refs = {"image": job.image} | ({"audio": job.audio} if job.audio else {})
    paths = dict(zip(refs, await ops.fetch_all(ctx, **refs), strict=True))
    t_fetch = ops.clock()
    image = await _validate(ops, paths)
    canvas = canvas_size(job, image.width, image.height)
    frame = await _decode_fitted(ops, str(paths["image"]), job, canvas)
    t_validate = ops.clock()
    renderer = KenBurnsRenderer(frame, job.width, job.height, canvas)
    boxes = to_canvas(frame_boxes(job), job, canvas)
    encoder = ops.encoder_for(job)
    output = ctx.work_dir / f"output.{job.output.container}"
    argv = encode_argv(ffmpeg=ops.config.ffmpeg, job=job, encoder=encoder,
                       output_path=str(output),
                       audio_path=str(paths["audio"]) if "audio" in paths else None)

    async def feed(stdin: asyncio.StreamWriter) -> None:
        async for planes in render_frames(renderer, boxes):
            stdin.writelines(planes)
            await stdin.drain()

    framed = MediaInfo(format_name=image.format_name, duration_s=frame_count(job) / job.fps,
                       has_video=True, has_audio="audio" in paths, width=job.width,
                       height=job.height, fps=float(job.fps))
    encoded = await ops.encode_fed(argv, feed, framed, framed.duration_s, ctx)
    # Exactly frame_count frames went in; FFmpeg's last progress time is the last frame's
    # start, one frame short of the video's length.
    encoded = dataclasses.replace(encoded, media_time_s=framed.duration_s)
    t_encode = ops.clock()
    out_info = await ops.store_output(output, ctx, encoded, job.output, job.output.video_codec)
    t_done = ops.clock()
    return JobResult(out_info, ops.timings(
        ctx, fetch_s=t_fetch - t0, validate_s=t_validate - t_fetch,
        encode_s=t_encode - t_validate, upload_s=t_done - t_encode, done_at=t_done))


async def _validate(ops: Operations, paths: dict[str, Path]) -> MediaInfo:
    probes = [probe_media(ops.config.ffprobe, str(paths["image"]), label="image",
                          formats=IMAGE_FORMATS)]
    if "audio" in paths:
        probes.append(probe_media(ops.config.ffprobe, str(paths["audio"]), label="audio",
                                  formats=AUDIO_FORMATS))
    infos = await asyncio.gather(*probes)
    require_image(infos[0], label="image", path=paths["image"])
    if len(infos) > 1:
        require_audio(infos[1], ops.limits, label="audio")
    return infos[0]


async def _decode_fitted(ops: Operations, image: str, job: Img2VidJob,
                         canvas: tuple[int, int]) -> bytes:
    rc, out, err = await run_capture(fit_argv(ffmpeg=ops.config.ffmpeg, image_path=image,
                                              job=job, canvas=canvas), timeout_s=60.0)
    expected = canvas[0] * canvas[1] * 3 // 2
    if rc != 0 or len(out) != expected:
        detail = err.decode(errors="replace").strip().splitlines()
        raise invalid_input(f"image: could not be decoded ({detail[-1] if detail else rc})")
    return out
