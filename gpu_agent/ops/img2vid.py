"""img2vid: the Ken Burns geometry (pure) and the FFmpeg commands around the renderer.

The image is decoded and fitted to the output size once (FFmpeg, Lanczos). Each frame is then
a float box of that image, resampled to the full frame by ``gpu_agent/render.py``; the box
for frame n comes from ``frame_boxes``. Nothing is rounded to whole pixels, which is what made
the old ``scale=6720:3840,zoompan`` pipeline jitter (zoompan snaps its crop to even pixels).

Coordinates are continuous: pixel i covers [i, i+1). A box (x0, y0, w, h) shows that part of
the fitted W x H image. With zoom z, w = W/z and h = H/z, and the focus point (fx, fy) keeps
its place in the frame: x0 = fx (W - w), y0 = fy (H - h). The box never leaves the image,
since z >= 1 and fx, fy are in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from broker.jobs import Img2VidJob
from gpu_agent.media import AUDIO_FORMATS
from gpu_agent.ops.common import audio_args, container_args, ffmpeg_prelude, video_args

__all__ = [
    "IMAGE_FORMATS",
    "MAX_CANVAS_PIXELS",
    "Box",
    "canvas_size",
    "ease",
    "encode_argv",
    "fit_argv",
    "frame_boxes",
    "frame_count",
    "to_canvas",
]

IMAGE_FORMATS = "image2,jpeg_pipe,png_pipe,webp_pipe,bmp_pipe,tiff_pipe"


@dataclass(frozen=True, slots=True)
class Box:
    x0: float
    y0: float
    w: float
    h: float


def frame_count(job: Img2VidJob) -> int:
    return max(1, round(job.duration_s * job.fps))


def ease(t: float, kind: str) -> float:
    """Progress 0..1 for time 0..1; every curve starts at 0 and ends exactly at 1."""
    if kind == "ease_in":
        return t * t
    if kind == "ease_out":
        return 1 - (1 - t) * (1 - t)
    if kind == "ease_in_out":
        return (1 - math.cos(math.pi * t)) / 2
    return t


def frame_boxes(job: Img2VidJob) -> list[Box]:
    """The source box of every frame; the first has ``zoom_from``, the last ``zoom_to``."""
    n = frame_count(job)
    width, height = float(job.width), float(job.height)
    end_x = job.focus_x if job.pan_to_x is None else job.pan_to_x
    end_y = job.focus_y if job.pan_to_y is None else job.pan_to_y
    boxes = []
    for i in range(n):
        p = ease(i / (n - 1), job.easing) if n > 1 else 1.0
        zoom = job.zoom_from + (job.zoom_to - job.zoom_from) * p
        fx = job.focus_x + (end_x - job.focus_x) * p
        fy = job.focus_y + (end_y - job.focus_y) * p
        w, h = width / zoom, height / zoom
        boxes.append(Box(fx * (width - w), fy * (height - h), w, h))
    return boxes


MAX_CANVAS_PIXELS = 36_000_000  # the working canvas's budget (memory and render time)


def canvas_size(job: Img2VidJob, image_width: int, image_height: int) -> tuple[int, int]:
    """The size the image is decoded to before zooming. The output size, unless the zoom goes
    past 1.5 and the image has the detail for it: then up to max-zoom times larger, so a
    deep zoom into a big photo keeps the photo's detail instead of upscaling a small fit.
    (Below 1.5 the extra detail is barely visible and would cost render time.)"""
    zoom = max(job.zoom_from, job.zoom_to)
    if zoom <= 1.5 or image_width <= 0 or image_height <= 0:
        return job.width, job.height
    fitted = (max if job.fit == "crop" else min)(job.width / image_width,
                                                 job.height / image_height)
    budget = math.sqrt(MAX_CANVAS_PIXELS / (job.width * job.height))
    k = max(1.0, min(zoom, 1.0 / fitted, budget))
    return 2 * round(job.width * k / 2), 2 * round(job.height * k / 2)


def to_canvas(boxes: list[Box], job: Img2VidJob, canvas: tuple[int, int]) -> list[Box]:
    """Frame boxes (in output pixels) in the canvas's pixels."""
    sx, sy = canvas[0] / job.width, canvas[1] / job.height
    return [Box(b.x0 * sx, b.y0 * sy, b.w * sx, b.h * sy) for b in boxes]


def fit_argv(*, ffmpeg: str, image_path: str, job: Img2VidJob,
             canvas: tuple[int, int] | None = None) -> list[str]:
    """Decode the image once, fitted to ``canvas`` (default: the output size), as raw 4:2:0
    on stdout."""
    w, h = canvas or (job.width, job.height)
    # BT.709 limited range, and the output tagged so: untagged HD is read as BT.709 by
    # players, and BT.601 numbers shift hues.
    scale = "flags=lanczos+accurate_rnd+full_chroma_int:out_color_matrix=bt709:out_range=tv"
    if job.fit == "crop":
        fit = f"scale={w}:{h}:force_original_aspect_ratio=increase:{scale},crop={w}:{h}"
    else:
        fit = (f"scale={w}:{h}:force_original_aspect_ratio=decrease:{scale},"
               f"pad={w}:{h}:(ow-iw)/2:(oh-ih)/2:color=0x{job.pad_color[1:]}")
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error",
            "-format_whitelist", IMAGE_FORMATS, "-protocol_whitelist", "file",
            "-i", image_path, "-frames:v", "1", "-vf", f"{fit},setsar=1,format=yuv420p",
            "-f", "rawvideo", "pipe:1"]


def encode_argv(*, ffmpeg: str, job: Img2VidJob, encoder: str, output_path: str,
                audio_path: str | None) -> list[str]:
    """Raw frames on stdin (``frame_count`` of them) -> the output, with the optional
    music bed padded or trimmed to the video's length and faded out."""
    n = frame_count(job)
    duration_s = n / job.fps
    argv = [*ffmpeg_prelude(ffmpeg),
            "-f", "rawvideo", "-pix_fmt", "yuv420p", "-s", f"{job.width}x{job.height}",
            "-framerate", str(job.fps), "-i", "pipe:0"]
    if audio_path:
        chain = [f"volume={job.audio_volume:.4f}", f"apad=whole_dur={duration_s:.6f}",
                 f"atrim=end={duration_s:.6f}"]
        if job.audio_fade_out_s > 0:
            fade_s = min(job.audio_fade_out_s, duration_s)
            chain.append(f"afade=t=out:st={duration_s - fade_s:.6f}:d={fade_s:.6f}")
        argv += ["-format_whitelist", AUDIO_FORMATS, "-protocol_whitelist", "file",
                 "-i", audio_path, "-filter_complex", f"[1:a:0]{','.join(chain)}[aout]",
                 "-map", "0:v:0", "-map", "[aout]"]
    # No -frames:v: stdin ends after exactly n frames, and -frames:v would also stop the
    # audio early (measured: 1.24 s of a 2 s bed).
    argv += ["-r", str(job.fps), *video_args(encoder, job.output.quality),
             "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
             "-color_range", "tv"]
    if audio_path:
        argv += audio_args(job.output.container, "")  # filtered audio is always encoded
    return argv + container_args(job.output.container, output_path)
