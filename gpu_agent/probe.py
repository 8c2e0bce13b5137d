"""Which encoders really work on this machine, found by a real one-frame encode each.

FFmpeg lists h264_nvenc whether or not a GPU, a new-enough driver or the container's video
capability exists, so the list proves nothing; only an encode does. The same code picks NVENC
on a GPU machine and libx264 here, and every result names the encoder that ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpu_agent.ffmpeg import run_capture

__all__ = ["H264_CANDIDATES", "EncoderProbe", "probe_encoders"]

H264_CANDIDATES = ("h264_nvenc", "libx264")


@dataclass(frozen=True, slots=True)
class EncoderProbe:
    h264: str  # the H.264 encoder jobs will use
    failures: dict[str, str] = field(default_factory=dict)  # encoder -> why it was skipped


async def _try_encoder(ffmpeg: str, encoder: str, timeout_s: float) -> str | None:
    argv = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error",
            "-f", "lavfi", "-i", "color=black:s=256x256:d=0.04",
            "-frames:v", "1", "-pix_fmt", "yuv420p", "-c:v", encoder, "-f", "null", "-"]
    try:
        rc, _, err = await run_capture(argv, timeout_s)
    except TimeoutError:
        return f"probe encode took over {timeout_s:.0f}s"
    except OSError as exc:
        return f"cannot run {ffmpeg}: {exc.strerror}"
    if rc != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        return lines[0] if lines else f"exit code {rc}"
    return None


async def probe_encoders(ffmpeg: str, *, timeout_s: float = 20.0,
                         candidates: tuple[str, ...] = H264_CANDIDATES) -> EncoderProbe:
    """Try ``candidates`` in order; the first that encodes a frame wins.

    Raises RuntimeError when none works: an agent that cannot encode must not pull jobs.
    """
    failures: dict[str, str] = {}
    for encoder in candidates:
        problem = await _try_encoder(ffmpeg, encoder, timeout_s)
        if problem is None:
            return EncoderProbe(h264=encoder, failures=failures)
        failures[encoder] = problem
    raise RuntimeError(f"no working H.264 encoder: {failures}")
