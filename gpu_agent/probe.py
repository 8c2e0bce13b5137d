"""Which encoders really work on this machine, found by a real one-frame encode each.

FFmpeg lists h264_nvenc whether or not a GPU, a new-enough driver or the container's video
capability exists, so the list proves nothing; only an encode does. The same code picks NVENC
on a GPU machine and the CPU encoders here, and every result names the encoder that ran.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from dataclasses import dataclass, field

from gpu_agent.ffmpeg import run_capture

__all__ = ["CANDIDATES", "EncoderProbe", "probe_encoders"]

# Per output codec, in order of preference: the GPU encoder first.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "h264": ("h264_nvenc", "libx264"),
    "hevc": ("hevc_nvenc", "libx265"),
    "av1": ("av1_nvenc", "libsvtav1"),
}


@dataclass(frozen=True, slots=True)
class EncoderProbe:
    chosen: dict[str, str]  # codec -> the encoder jobs will use; a codec absent has none
    failures: dict[str, str] = field(default_factory=dict)  # encoder -> why it was skipped
    cuda_decode: bool = False  # `-hwaccel cuda` decoded a real H.264 frame

    @property
    def h264(self) -> str:
        return self.chosen["h264"]

    def encoder_for(self, codec: str) -> str | None:
        return self.chosen.get(codec)


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
        lines = [ln for ln in err.decode(errors="replace").strip().splitlines() if ln]
        return lines[0] if lines else f"exit code {rc}"
    return None


# One probe per FFmpeg binary and process: a machine's encoders do not change while it runs,
# and a probe costs about 0.7 s of encodes (an agent probes once at its start; several agents
# in one process, as in the tests, share the answer). A failed probe is not kept.
_PROBED: dict[tuple[str, float, tuple[tuple[str, tuple[str, ...]], ...]], EncoderProbe] = {}


async def probe_encoders(ffmpeg: str, *, timeout_s: float = 20.0,
                         candidates: dict[str, tuple[str, ...]] | None = None) -> EncoderProbe:
    """Try every candidate (concurrently per codec, in order within one); the first that
    encodes a frame wins its codec. Asked again in the same process for the same binary
    (same path, same modification time), the first answer.

    Raises RuntimeError when no H.264 encoder works: an agent that cannot encode the default
    output must not pull jobs. A missing HEVC or AV1 encoder only fails the jobs asking for it.
    """
    candidates = candidates or CANDIDATES
    binary = shutil.which(ffmpeg) or ffmpeg  # a PATH that changes finds another binary
    try:
        key = (os.path.realpath(binary), os.stat(binary).st_mtime, tuple(candidates.items()))
    except OSError:
        key = None
    if key is not None and key in _PROBED:
        return _PROBED[key]
    probe = await _probe(ffmpeg, timeout_s, candidates)
    if key is not None:
        _PROBED[key] = probe
    return probe


async def _probe(ffmpeg: str, timeout_s: float,
                 candidates: dict[str, tuple[str, ...]]) -> EncoderProbe:
    failures: dict[str, str] = {}

    async def first_working(encoders: tuple[str, ...]) -> str | None:
        for encoder in encoders:
            problem = await _try_encoder(ffmpeg, encoder, timeout_s)
            if problem is None:
                return encoder
            failures[encoder] = problem
        return None

    found = await asyncio.gather(*(first_working(e) for e in candidates.values()))
    chosen = {codec: enc for codec, enc in zip(candidates, found, strict=True) if enc}
    if "h264" not in chosen:
        raise RuntimeError(f"no working H.264 encoder: {failures}")
    cuda = await _try_cuda_decode(ffmpeg, timeout_s)
    if cuda:
        failures["hwaccel cuda"] = cuda
    return EncoderProbe(chosen=chosen, failures=failures, cuda_decode=cuda is None)


async def _try_cuda_decode(ffmpeg: str, timeout_s: float) -> str | None:
    """Decode one real H.264 frame with ``-hwaccel cuda`` (fatal, not a soft fallback, when
    there is no device). Returns why it failed, or None when it works."""
    with tempfile.TemporaryDirectory(prefix="vidfleet-probe-") as tmp:
        clip = os.path.join(tmp, "probe.mp4")
        make = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi",
                "-i", "color=black:s=256x256:d=0.04", "-frames:v", "1", "-c:v", "libx264",
                "-pix_fmt", "yuv420p", clip]
        try:
            rc, _, err = await run_capture(make, timeout_s)
            if rc != 0:
                return "could not make a probe clip"
            rc, _, err = await run_capture([ffmpeg, "-hide_banner", "-nostdin", "-loglevel",
                                            "error", "-hwaccel", "cuda", "-i", clip,
                                            "-f", "null", "-"], timeout_s)
        except (OSError, TimeoutError) as exc:
            return str(exc) or type(exc).__name__
    if rc != 0:
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln]
        return lines[0] if lines else f"exit code {rc}"
    return None
