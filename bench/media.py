"""What the media operations cost and how good img2vid's frames are, measured side by side.

1. img2vid, old versus ours, on one 1920x1080 noise-textured JPEG (``testsrc2`` + ``noise``,
   saved at ``-q:v 2``), 5 s at 24 fps, a centred linear zoom 1.0 -> 1.324:

   * OLD is the pipeline img2vid replaced: ``-framerate 24 -loop 1 -i image.jpg``, then
     ``scale=6720:3840,zoompan`` with ``z=min(1+0.324*on/120,1.324)``, centred
     (``x=iw/2-(iw/zoom/2)``, ``y=ih/2-(ih/zoom/2)``), ``format=nv12``, 120 frames.
   * OURS is what the agent runs: the image decoded and fitted once (``fit_argv``), every
     frame rendered at float precision (``KenBurnsRenderer`` / ``render_frames``), the raw
     frames piped into the exact ``encode_argv`` command.

   The *render stage* is OLD's filter graph alone (``-f null``) against OURS's fit plus
   rendering (frames discarded): the CPU work left on a GPU box, where NVENC makes the encode
   nearly free. Target: old/ours >= 2x. The *whole job* adds libx264 veryfast CRF 23 to both.
   CPU-seconds (this process plus its children) are shown beside the wall times, because
   zoompan uses one core and our renderer one thread per core.

   Quality, on lossless luma (our renderer's Y plane; OLD's graph to raw Y, no encode):

   * SSIM (Y, Gaussian window sigma 1.5) against an exact render of the same geometry: Pillow
     LANCZOS box-resizes of the fitted image with the float boxes of ``frame_boxes``. OLD's
     zoom law 1 + 0.324 n/120 ends at 1.3213 on frame 119, so its exact render uses a job with
     that ``zoom_to``: each pipeline is judged against what it was asked to draw. Every
     ``--ssim-step``-th frame and the last. Target: ours >= 0.99 (old: 0.848 in
     ffmpeg.md section 2).
   * Jitter: a second JPEG with 12 Gaussian dots (sigma 3 px) at known places. Per dot and
     frame, the intensity-weighted centroid of the pixels above a threshold; the zoom is
     linear, so each dot's ideal path is a straight line in frame number, and jitter is the
     residual after a per-dot linear fit (per axis, pooled over x and y: RMS and max, and
     the largest frame-to-frame change of that residual). The exact render gives the
     measurement's noise floor. Target: ours <= 0.02 px RMS (old: 0.19 px).

2. caption and add_audio through the fleet against the one FFmpeg command the agent runs for
   the same job (same argv builders), on a 10 s 1280x720 clip with AAC audio, through an
   embedded nats-server and one warm in-process agent, as bench/overhead.py does. The fleet
   time covers upload, submit, the agent's fetch/validate/encode/upload and the download.
   Target: median fleet/raw <= 1.05 for each.

Timed runs alternate which side goes first and are reported as medians over rounds; on a
shared, noisy machine ratios of neighbouring runs drift far less than absolute seconds.

Run from the repository root: ``.venv/bin/python bench/media.py`` (``--quick`` for a smoke
run, ``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.overhead import (  # noqa: E402
    ClientPhases,
    Stack,
    client_path,
    machine_facts,
    make_srt,
    outside_ffmpeg,
    running_stack,
    verdict,
)
from broker.events import Succeeded, Timings  # noqa: E402
from broker.jobs import AddAudioJob, CaptionJob, Img2VidJob, JobRequest  # noqa: E402
from broker.logs import setup_logging  # noqa: E402
from client.sample import make_video  # noqa: E402
from gpu_agent.ffmpeg import ProgressUpdate, run_capture, run_ffmpeg  # noqa: E402
from gpu_agent.media import INPUT_FORMATS, MediaInfo, probe_media  # noqa: E402
from gpu_agent.ops.add_audio import add_audio_argv  # noqa: E402
from gpu_agent.ops.caption import caption_argv  # noqa: E402
from gpu_agent.ops.img2vid import Box, encode_argv, fit_argv, frame_boxes  # noqa: E402
from gpu_agent.render import Frame, KenBurnsRenderer, render_frames  # noqa: E402

RENDER_RATIO_TARGET = 2.0
RENDER_CPU_RATIO_TARGET = 5.0  # issue 13: the render stage in CPU-seconds
SSIM_TARGET = 0.99
JITTER_RMS_TARGET_PX = 0.02
FLEET_RATIO_TARGET = 1.05
JOB_TIMEOUT_S = 600.0

WIDTH, HEIGHT, FPS, SECONDS = 1920, 1080, 24, 5.0
FRAMES = round(FPS * SECONDS)
ZOOM_TO = 1.324
OLD_ZOOM = f"min(1+{ZOOM_TO - 1:.3f}*on/{FRAMES},{ZOOM_TO})"
OLD_GRAPH = (f"scale=6720:3840,zoompan=z='{OLD_ZOOM}':x='iw/2-(iw/zoom/2)':"
             f"y='ih/2-(ih/zoom/2)':d={FRAMES}:s={WIDTH}x{HEIGHT}:fps={FPS},format=nv12")
X264 = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "23"]
FFMPEG = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y"]

DOT_SIGMA_PX = 3.0
DOTS = [(x, y) for y in (260.4, 540.8, 820.1) for x in (420.3, 760.7, 1160.2, 1500.6)]
DOT_WINDOW_PX = 16  # half-size; the dots' sigma never exceeds 4 px on the output
DOT_THRESHOLD = 10.0  # levels above limited-range black (16); about 5 % of a dot's peak


def ours_job() -> Img2VidJob:
    return Img2VidJob(image="obj:bench", duration_s=SECONDS, fps=FPS, width=WIDTH,
                      height=HEIGHT, zoom_from=1.0, zoom_to=ZOOM_TO)


def old_law_job() -> Img2VidJob:
    """The job whose boxes are OLD's own geometry: zoompan's ``on`` runs 0..119 over /120."""
    return Img2VidJob(image="obj:bench", duration_s=SECONDS, fps=FPS, width=WIDTH,
                      height=HEIGHT, zoom_from=1.0,
                      zoom_to=1 + (ZOOM_TO - 1) * (FRAMES - 1) / FRAMES)


# ---------------------------------------------------------------- test media


@dataclass(frozen=True)
class Media:
    texture: Path  # the img2vid timing and SSIM image
    dots: Path  # the jitter image
    video: Path  # caption / add_audio input
    srt: Path
    music: Path


def run_ffmpeg_sync(args: list[str]) -> None:
    subprocess.run([*FFMPEG, *args], check=True)


def make_dots_jpeg(root: Path) -> Path:
    """Black, with 12 white Gaussian dots; a 4:2:0 JPEG like a photo, so the old pipeline's
    chroma-driven rounding applies to it."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64) + 0.5  # pixel centres
    img = np.zeros((HEIGHT, WIDTH))
    for cx, cy in DOTS:
        img += 255.0 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * DOT_SIGMA_PX ** 2))
    png = root / "dots.png"
    Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)).save(png)
    run_ffmpeg_sync(["-i", str(png), "-pix_fmt", "yuvj420p", "-q:v", "2",
                     str(root / "dots.jpg")])
    return root / "dots.jpg"


def make_media(root: Path, video_seconds: float) -> Media:
    texture = root / "texture.jpg"
    run_ffmpeg_sync(["-f", "lavfi", "-i", f"testsrc2=s={WIDTH}x{HEIGHT},noise=alls=12",
                     "-frames:v", "1", "-pix_fmt", "yuvj420p", "-q:v", "2", str(texture)])
    music = root / "music.m4a"  # a tone over pink noise: AAC on a pure sine is unusually slow
    run_ffmpeg_sync(["-f", "lavfi", "-i", f"sine=f=330:sample_rate=44100:d={video_seconds + 5}",
                     "-f", "lavfi", "-i", f"anoisesrc=c=pink:a=0.1:r=44100:d={video_seconds + 5}",
                     "-filter_complex", "amix=inputs=2:normalize=0", "-c:a", "aac",
                     "-b:a", "128k", str(music)])
    return Media(texture=texture, dots=make_dots_jpeg(root),
                 video=make_video(root / "talk.mp4", seconds=video_seconds, size="1280x720"),
                 srt=make_srt(root / "talk.srt", seconds=video_seconds), music=music)


# ---------------------------------------------------------------- img2vid: the two pipelines


def cpu_now_s() -> float:
    """CPU seconds of this process (all threads) plus its waited-for children."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def old_argv(image: Path, tail: list[str], graph: str = OLD_GRAPH) -> list[str]:
    return [*FFMPEG, "-framerate", str(FPS), "-loop", "1", "-i", str(image), "-vf", graph,
            "-frames:v", str(FRAMES), *tail]


async def check_run(argv: list[str]) -> bytes:
    rc, out, err = await run_capture(argv, JOB_TIMEOUT_S)
    if rc != 0:
        raise RuntimeError(f"{argv[0]} failed ({rc}): {err.decode(errors='replace')[-500:]}")
    return out


async def fitted(image: Path, job: Img2VidJob) -> bytes:
    """The image decoded once and fitted to the frame, as the agent does it."""
    out = await check_run(fit_argv(ffmpeg="ffmpeg", image_path=str(image), job=job))
    if len(out) != job.width * job.height * 3 // 2:
        raise RuntimeError(f"fit_argv gave {len(out)} bytes")
    return out


async def ours_frames(image: Path, job: Img2VidJob) -> AsyncIterator[Frame]:
    renderer = KenBurnsRenderer(await fitted(image, job), job.width, job.height)
    async for raw in render_frames(renderer, frame_boxes(job)):
        yield raw


async def ours_render(image: Path) -> None:
    async for _ in ours_frames(image, ours_job()):
        pass


async def ignore_progress(_: ProgressUpdate) -> None:
    return None


async def ours_whole_job(image: Path, out: Path) -> None:
    job = ours_job()
    argv = encode_argv(ffmpeg="ffmpeg", job=job, encoder="libx264", output_path=str(out),
                       audio_path=None)

    async def feed(stdin: asyncio.StreamWriter) -> None:
        async for raw in ours_frames(image, job):
            stdin.writelines(raw)
            await stdin.drain()

    result = await run_ffmpeg(argv, on_progress=ignore_progress, feed=feed)
    if result.returncode != 0:
        raise RuntimeError(f"encode_argv failed ({result.returncode}): {result.stderr_tail}")
    out.unlink()


async def old_render(image: Path) -> None:
    await check_run(old_argv(image, ["-f", "null", "-"]))


async def old_whole_job(image: Path, out: Path) -> None:
    await check_run(old_argv(image, [*X264, str(out)]))
    out.unlink()


# ---------------------------------------------------------------- img2vid: timing rounds


@dataclass(frozen=True)
class Timed:
    wall_s: float
    cpu_s: float


async def timed(action: Callable[[], Awaitable[None]]) -> Timed:
    cpu0, t0 = cpu_now_s(), time.perf_counter()
    await action()
    return Timed(time.perf_counter() - t0, cpu_now_s() - cpu0)


@dataclass(frozen=True)
class Img2VidRound:
    old_first: bool
    old_render: Timed
    ours_render: Timed
    old_job: Timed
    ours_job: Timed

    @property
    def render_ratio(self) -> float:
        return self.old_render.wall_s / self.ours_render.wall_s

    @property
    def job_ratio(self) -> float:
        return self.old_job.wall_s / self.ours_job.wall_s


async def img2vid_round(image: Path, out_dir: Path, n: int) -> Img2VidRound:
    old_first = n % 2 == 0
    stages: dict[str, Callable[[], Awaitable[None]]] = {
        "old_render": lambda: old_render(image),
        "ours_render": lambda: ours_render(image),
        "old_job": lambda: old_whole_job(image, out_dir / "old.mp4"),
        "ours_job": lambda: ours_whole_job(image, out_dir / "ours.mp4"),
    }
    sides = ("old", "ours") if old_first else ("ours", "old")
    times = {}
    for stage in ("render", "job"):
        for side in sides:
            times[f"{side}_{stage}"] = await timed(stages[f"{side}_{stage}"])
    return Img2VidRound(old_first, **times)


def print_img2vid_round(n: int, r: Img2VidRound) -> None:
    def pair(old: Timed, ours: Timed) -> str:
        return (f"old {old.wall_s:5.2f} s ({old.cpu_s:5.2f} CPU s)  ours {ours.wall_s:5.2f} s "
                f"({ours.cpu_s:5.2f} CPU s)")

    print(f"  round {n + 1} ({'old' if r.old_first else 'ours'} first): render "
          f"{pair(r.old_render, r.ours_render)} ratio {r.render_ratio:.2f}x | whole job "
          f"{pair(r.old_job, r.ours_job)} ratio {r.job_ratio:.2f}x", flush=True)


async def img2vid_rounds(media: Media, out_dir: Path, rounds: int,
                         warmup: int) -> list[Img2VidRound]:
    print(f"img2vid timing: {rounds} round(s) after {warmup} untimed warm-up round(s)",
          flush=True)
    for n in range(warmup):
        await img2vid_round(media.texture, out_dir, n)
    results = []
    for n in range(rounds):
        results.append(await img2vid_round(media.texture, out_dir, n))
        print_img2vid_round(n, results[-1])
    return results


# ---------------------------------------------------------------- img2vid: quality


async def old_luma(image: Path) -> AsyncIterator[np.ndarray]:
    """OLD's frames, lossless: the same graph, then its Y plane as it is. (``-pix_fmt gray``
    on nv12 would stretch limited range to full: swscale treats gray as full range.)"""
    argv = old_argv(image, ["-f", "rawvideo", "-pix_fmt", "gray", "pipe:1"],
                    graph=OLD_GRAPH + ",extractplanes=y")
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stdin=asyncio.subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        for _ in range(FRAMES):
            raw = await proc.stdout.readexactly(WIDTH * HEIGHT)
            yield np.frombuffer(raw, np.uint8).reshape(HEIGHT, WIDTH)
        if await proc.stdout.read() or await proc.wait():
            raise RuntimeError(f"the old pipeline gave more than {FRAMES} frames or failed")
    finally:
        if proc.returncode is None:  # the consumer stopped early, or an error
            proc.kill()
            await proc.wait()


async def ours_luma(image: Path) -> AsyncIterator[np.ndarray]:
    async for raw in ours_frames(image, ours_job()):
        yield np.frombuffer(raw[0], np.uint8, count=WIDTH * HEIGHT).reshape(HEIGHT, WIDTH)


class ExactRender:
    """The reference: LANCZOS box-resizes of the fitted luma, float boxes, no rounding."""

    def __init__(self, fitted_yuv: bytes) -> None:
        self._y = Image.frombytes("L", (WIDTH, HEIGHT), fitted_yuv[:WIDTH * HEIGHT])

    def frame(self, box: Box) -> np.ndarray:
        image = self._y.resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS,
                               box=(box.x0, box.y0, box.x0 + box.w, box.y0 + box.h))
        return np.asarray(image)


def gaussian_kernel(sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-x * x / (2 * sigma * sigma))
    return (k / k.sum()).astype(np.float32)


def blur_valid(a: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable convolution with ``k``, keeping only the fully covered ('valid') region."""
    r = len(k) // 2
    rows = sum(k[i] * a[:, i:a.shape[1] - 2 * r + i] for i in range(len(k)))
    return sum(k[i] * rows[i:rows.shape[0] - 2 * r + i, :] for i in range(len(k)))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    x, y = a.astype(np.float32), b.astype(np.float32)
    k = gaussian_kernel()
    mx, my = blur_valid(x, k), blur_valid(y, k)
    sxx = blur_valid(x * x, k) - mx * mx
    syy = blur_valid(y * y, k) - my * my
    sxy = blur_valid(x * y, k) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))


async def ssim_series(frames: AsyncIterator[np.ndarray], exact: ExactRender, boxes: list[Box],
                      step: int) -> list[float]:
    """SSIM of every ``step``-th frame and the last against the exact render."""
    picked = set(range(0, len(boxes), step)) | {len(boxes) - 1}
    scores, n = [], 0
    async for frame in frames:
        if n in picked:
            scores.append(ssim(frame, exact.frame(boxes[n])))
        n += 1
    if n != len(boxes):
        raise RuntimeError(f"got {n} frames, expected {len(boxes)}")
    return scores


def dot_centroids(frame: np.ndarray, box: Box) -> np.ndarray:
    """(dots, 2) centroids in output pixels, from the pixels above the threshold in a window
    around each dot's expected place (which only has to contain the dot)."""
    scale = WIDTH / box.w
    out = np.empty((len(DOTS), 2))
    for i, (sx, sy) in enumerate(DOTS):
        cx, cy = round((sx - box.x0) * scale), round((sy - box.y0) * scale)
        ys, xs = slice(cy - DOT_WINDOW_PX, cy + DOT_WINDOW_PX + 1), \
            slice(cx - DOT_WINDOW_PX, cx + DOT_WINDOW_PX + 1)
        w = np.clip(frame[ys, xs].astype(np.float64) - (16 + DOT_THRESHOLD), 0, None)
        total = w.sum()
        out[i, 0] = (w.sum(axis=0) * (np.arange(xs.start, xs.stop) + 0.5)).sum() / total
        out[i, 1] = (w.sum(axis=1) * (np.arange(ys.start, ys.stop) + 0.5)).sum() / total
    return out


@dataclass(frozen=True)
class Jitter:
    rms_px: float
    max_px: float
    step_max_px: float  # the largest change of the error between consecutive frames


def jitter_of(tracks: np.ndarray) -> Jitter:
    """``tracks``: (frames, dots, 2). Residuals after a per-dot, per-axis linear fit, pooled
    over both axes (per-axis figures, as in ffmpeg.md; a 2-D RMS is sqrt(2) times larger)."""
    n = np.arange(tracks.shape[0], dtype=np.float64)
    design = np.stack([n, np.ones_like(n)], axis=1)
    flat = tracks.reshape(len(n), -1)
    coef, *_ = np.linalg.lstsq(design, flat, rcond=None)
    resid = flat - design @ coef
    step = np.abs(np.diff(resid, axis=0)).max()
    return Jitter(float(np.sqrt(np.mean(resid ** 2))), float(np.abs(resid).max()), float(step))


async def track_dots(frames: AsyncIterator[np.ndarray], boxes: list[Box]) -> Jitter:
    tracks: list[np.ndarray] = []
    async for frame in frames:
        if len(tracks) < len(boxes):
            tracks.append(dot_centroids(frame, boxes[len(tracks)]))
    if len(tracks) != len(boxes):
        raise RuntimeError(f"got {len(tracks)} frames, expected {len(boxes)}")
    return jitter_of(np.stack(tracks))


async def exact_luma(exact: ExactRender, boxes: list[Box]) -> AsyncIterator[np.ndarray]:
    for box in boxes:
        yield exact.frame(box)


@dataclass(frozen=True)
class Quality:
    ssim_ours: list[float]  # per sampled frame
    ssim_old: list[float]
    jitter_ours: Jitter
    jitter_old: Jitter
    jitter_exact: Jitter  # the measurement's noise floor


async def measure_quality(media: Media, ssim_step: int) -> Quality:
    ours_boxes, old_boxes = frame_boxes(ours_job()), frame_boxes(old_law_job())
    print(f"img2vid quality: SSIM every {ssim_step}th frame, dots on all {FRAMES}", flush=True)
    texture = ExactRender(await fitted(media.texture, ours_job()))
    ssim_ours = await ssim_series(ours_luma(media.texture), texture, ours_boxes, ssim_step)
    ssim_old = await ssim_series(old_luma(media.texture), texture, old_boxes, ssim_step)
    for name, scores in (("ours", ssim_ours), ("old", ssim_old)):
        print(f"  SSIM-Y vs exact, {name:4}: mean {np.mean(scores):.4f}  per frame "
              + " ".join(f"{v:.3f}" for v in scores), flush=True)
    dots = ExactRender(await fitted(media.dots, ours_job()))
    q = Quality(ssim_ours, ssim_old, await track_dots(ours_luma(media.dots), ours_boxes),
                await track_dots(old_luma(media.dots), old_boxes),
                await track_dots(exact_luma(dots, ours_boxes), ours_boxes))
    for name, j in (("ours", q.jitter_ours), ("old", q.jitter_old), ("exact", q.jitter_exact)):
        print(f"  jitter {name:5}: RMS {j.rms_px:.4f} px  max {j.max_px:.4f} px  "
              f"frame-step max {j.step_max_px:.4f} px", flush=True)
    return q


# ---------------------------------------------------------------- caption / add_audio


@dataclass(frozen=True)
class FleetRound:
    raw_first: bool
    raw_s: float
    fleet_s: float
    agent: Timings
    client: ClientPhases

    @property
    def ratio(self) -> float:
        return self.fleet_s / self.raw_s

    @property
    def outside_ffmpeg_s(self) -> float:
        return self.fleet_s - self.agent.encode_s


@dataclass(frozen=True)
class FleetCase:
    """One operation: its inputs, the job built from their uploaded refs, and the argv the
    agent would run for that job on the local files."""

    name: str
    inputs: dict[str, Path]
    job: Callable[[dict[str, str]], JobRequest]
    raw_argv: Callable[[Path], list[str]]


async def run_raw(argv: list[str], out: Path) -> float:
    """The agent's argv, run the way the agent runs it (async child), timed wall-clock."""
    t0 = time.perf_counter()
    await check_run(argv)
    elapsed = time.perf_counter() - t0
    out.unlink()
    return elapsed


async def fleet_round(stack: Stack, case: FleetCase, out_dir: Path, n: int) -> FleetRound:
    raw_first = n % 2 == 0
    raw_s = fleet_s = 0.0
    done: Succeeded | None = None
    phases: ClientPhases | None = None
    for which in ("raw", "fleet") if raw_first else ("fleet", "raw"):
        if which == "raw":
            out = out_dir / f"raw-{case.name}.mp4"
            raw_s = await run_raw(case.raw_argv(out), out)
        else:
            fleet_s, done, phases = await client_path(stack.client, case.inputs, case.job,
                                                      out_dir / f"fleet-{case.name}.mp4")
    assert done is not None
    assert phases is not None
    return FleetRound(raw_first, raw_s, fleet_s, done.timings, phases)


async def fleet_cases(stack: Stack, media: Media) -> list[FleetCase]:
    assert stack.agent.encoders is not None
    ffmpeg, encoder = stack.agent.config.ffmpeg, stack.agent.encoders.h264
    info: MediaInfo = await probe_media(stack.agent.config.ffprobe, str(media.video),
                                        label="video")
    audio_job = AddAudioJob(video="obj:bench", audio="obj:bench")
    return [
        FleetCase("caption", {"video": media.video, "srt": media.srt},
                  lambda r: CaptionJob(video=r["video"], srt=r["srt"], cache=False),
                  lambda out: caption_argv(
                      ffmpeg=ffmpeg, video_path=str(media.video), srt_path=str(media.srt),
                      output_path=str(out), encoder=encoder, fonts_dir=stack.fonts_dir,
                      input_formats=INPUT_FORMATS)),
        FleetCase("add_audio", {"video": media.video, "audio": media.music},
                  lambda r: AddAudioJob(video=r["video"], audio=r["audio"], cache=False),
                  lambda out: add_audio_argv(
                      ffmpeg=ffmpeg, video_path=str(media.video), audio_path=str(media.music),
                      output_path=str(out), job=audio_job, video=info)),
    ]


def print_fleet_round(name: str, n: int, r: FleetRound) -> None:
    t = r.agent
    print(f"  {name} round {n + 1} ({'raw' if r.raw_first else 'fleet'} first): raw "
          f"{r.raw_s:5.2f} s  fleet {r.fleet_s:5.2f} s  ratio {r.ratio:.3f} | agent: fetch "
          f"{t.fetch_s:.2f} validate {t.validate_s:.2f} encode {t.encode_s:.2f} upload "
          f"{t.upload_s:.2f} | outside FFmpeg {r.outside_ffmpeg_s:.2f} s", flush=True)
    print("      outside FFmpeg, ms: " + "  ".join(
        f"{k} {v * 1000:.0f}" for k, v in outside_ffmpeg(t, r.client).items()), flush=True)


async def fleet_rounds(stack: Stack, media: Media, out_dir: Path, rounds: int,
                       warmup: int) -> dict[str, list[FleetRound]]:
    cases = await fleet_cases(stack, media)
    print(f"caption / add_audio: {rounds} round(s) after {warmup} untimed warm-up round(s)",
          flush=True)
    for n in range(warmup):
        for case in cases:
            await fleet_round(stack, case, out_dir, n)
    results: dict[str, list[FleetRound]] = {case.name: [] for case in cases}
    for n in range(rounds):
        for case in cases if n % 2 == 0 else reversed(cases):
            results[case.name].append(await fleet_round(stack, case, out_dir, n))
            print_fleet_round(case.name, n, results[case.name][-1])
    return results


# ---------------------------------------------------------------- report


@dataclass
class Report:
    img2vid: list[Img2VidRound] = field(default_factory=list)
    quality: Quality | None = None
    fleet: dict[str, list[FleetRound]] = field(default_factory=dict)
    encoder: str = ""
    encoder_failures: dict[str, str] = field(default_factory=dict)


def img2vid_rows(rounds: list[Img2VidRound]) -> list[tuple[str, str, str]]:
    med = statistics.median
    render = med(r.render_ratio for r in rounds)
    render_cpu = med(r.old_render.cpu_s / max(r.ours_render.cpu_s, 1e-9) for r in rounds)
    rows = []
    for label, old, ours in (
        ("render stage", [r.old_render for r in rounds], [r.ours_render for r in rounds]),
        ("whole job (libx264)", [r.old_job for r in rounds], [r.ours_job for r in rounds]),
    ):
        rows += [(f"img2vid {label}, old, median", f"{med(t.wall_s for t in old):.2f} s wall, "
                  f"{med(t.cpu_s for t in old):.2f} CPU s", ""),
                 (f"img2vid {label}, ours, median", f"{med(t.wall_s for t in ours):.2f} s "
                  f"wall, {med(t.cpu_s for t in ours):.2f} CPU s", "")]
    rows += [
        ("img2vid render old/ours, median of rounds", f"{render:.2f}x",
         f">= {RENDER_RATIO_TARGET:.0f}x: {verdict(render >= RENDER_RATIO_TARGET)}"),
        ("img2vid render old/ours in CPU s, median", f"{render_cpu:.2f}x",
         f">= {RENDER_CPU_RATIO_TARGET:.0f}x: "
         f"{verdict(render_cpu >= RENDER_CPU_RATIO_TARGET)}"),
        ("img2vid whole job old/ours, median of rounds",
         f"{med(r.job_ratio for r in rounds):.2f}x", ""),
    ]
    return rows


def quality_rows(q: Quality) -> list[tuple[str, str, str]]:
    def jit(j: Jitter) -> str:
        return f"{j.rms_px:.3f} px RMS, {j.max_px:.3f} max, {j.step_max_px:.3f} step"

    def sim(scores: list[float]) -> str:
        return f"{np.mean(scores):.4f} mean, {min(scores):.4f} worst frame"

    ours = float(np.mean(q.ssim_ours))
    return [
        ("SSIM-Y vs exact, ours", sim(q.ssim_ours),
         f">= {SSIM_TARGET} mean: {verdict(ours >= SSIM_TARGET)}"),
        ("SSIM-Y vs exact, old", sim(q.ssim_old), "(ffmpeg.md: 0.848)"),
        ("jitter, ours", jit(q.jitter_ours),
         f"<= {JITTER_RMS_TARGET_PX} px RMS: "
         f"{verdict(q.jitter_ours.rms_px <= JITTER_RMS_TARGET_PX)}"),
        ("jitter, old", jit(q.jitter_old), "(ffmpeg.md: 0.191 RMS, 0.355 max)"),
        ("jitter, exact render (noise floor)", jit(q.jitter_exact), ""),
    ]


def fleet_rows(fleet: dict[str, list[FleetRound]]) -> list[tuple[str, str, str]]:
    med = statistics.median
    rows = []
    for name, rounds in fleet.items():
        ratio = med(r.ratio for r in rounds)
        rows += [
            (f"{name}: raw FFmpeg, median", f"{med(r.raw_s for r in rounds):.2f} s", ""),
            (f"{name}: fleet path, median", f"{med(r.fleet_s for r in rounds):.2f} s", ""),
            (f"{name}: fleet / raw, median of rounds", f"{ratio:.3f}",
             f"<= {FLEET_RATIO_TARGET:.2f}: {verdict(ratio <= FLEET_RATIO_TARGET)}"),
            (f"{name}: fleet time outside FFmpeg, median",
             f"{med(r.outside_ffmpeg_s for r in rounds):.2f} s", ""),
        ]
    return rows


def print_summary(rep: Report) -> None:
    rows = [("video encoder (agent probe)", rep.encoder or "(stack not run)", "")]
    rows += img2vid_rows(rep.img2vid) if rep.img2vid else []
    rows += quality_rows(rep.quality) if rep.quality else []
    rows += fleet_rows(rep.fleet) if rep.fleet else []
    rows += [(k, v, "") for k, v in machine_facts()] + [("Pillow", PIL.__version__, "")]
    header = ("figure", "value", "target")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header[:2])]
    print("\nsummary")
    print(f"{header[0]:<{widths[0]}} | {header[1]:<{widths[1]}} | {header[2]}")
    print(f"{'-' * widths[0]}-|-{'-' * widths[1]}-|-{'-' * 20}")
    for name, value, target in rows:
        print(f"{name:<{widths[0]}} | {value:<{widths[1]}} | {target}".rstrip())
    if rep.encoder_failures:
        print("encoders skipped by the probe: " + "; ".join(
            f"{k}: {v}" for k, v in rep.encoder_failures.items()))


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="img2vid timing rounds (default 5)")
    p.add_argument("--fleet-rounds", type=int, default=5,
                   help="caption/add_audio raw+fleet rounds (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds before each part")
    p.add_argument("--ssim-step", type=int, default=10, help="SSIM on every n-th frame")
    p.add_argument("--video-seconds", type=float, default=10.0, help="caption/add_audio clip")
    p.add_argument("--skip", choices=["img2vid", "quality", "fleet"], action="append",
                   default=[], help="leave a part out (repeatable)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 rounds each, no warm-up, SSIM every 30th frame, 4 s clip")
    p.add_argument("--log-level", default="WARNING", help="vidfleet/nats-server log level")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.fleet_rounds, args.warmup = 2, 2, 0
        args.ssim_step, args.video_seconds = 30, 4.0
    return args


async def run(args: argparse.Namespace, root: Path) -> Report:
    print(f"generating media in {root} ...", flush=True)
    media = make_media(root, args.video_seconds)
    out_dir = root / "out"
    out_dir.mkdir()
    rep = Report()
    if "img2vid" not in args.skip:
        rep.img2vid = await img2vid_rounds(media, out_dir, args.rounds, args.warmup)
    if "quality" not in args.skip:
        rep.quality = await measure_quality(media, args.ssim_step)
    if "fleet" not in args.skip:
        async with running_stack(root) as stack:
            assert stack.agent.encoders is not None
            rep.encoder = stack.agent.encoders.h264
            rep.encoder_failures = dict(stack.agent.encoders.failures)
            print(f"stack up: {stack.server.url}, agent on {rep.encoder}", flush=True)
            rep.fleet = await fleet_rounds(stack, media, out_dir, args.fleet_rounds,
                                           args.warmup)
    return rep


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("bench", level=args.log_level)
    with tempfile.TemporaryDirectory(prefix="vidfleet-media-") as tmp:
        report = asyncio.run(run(args, Path(tmp)))
    print_summary(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
