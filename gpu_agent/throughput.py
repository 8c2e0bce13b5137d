"""How many jobs at once this machine encodes fastest: its throughput measured with 1..N
concurrent encodes, with the encoder and settings its H.264 jobs use, on a synthetic 720p clip.

NVENC runs several sessions side by side, and a job's decoding, subtitles and audio are CPU work
that overlaps the GPU's; libx264 already uses every core, so an encode beside it gains nothing.
Which is true of a rented machine is not known until it is measured, so the agent measures at
start (when the controller allows more than one slot) and runs as many slots as each add at
least ``min_gain`` of throughput. The figures go out in every heartbeat.
"""

from __future__ import annotations

import asyncio
import itertools
import time

from gpu_agent.ffmpeg import run_capture
from gpu_agent.ops.common import video_args

__all__ = ["measure_throughput", "slots_for"]

_FRAMES = 48
_SOURCE = "testsrc2=s=1280x720:r=24:d=2"  # textured and moving, unlike a flat colour


async def measure_throughput(ffmpeg: str, encoder: str, most: int, *,
                             timeout_s: float = 60.0) -> list[float]:
    """Frames per second encoded in all, with 1, 2, ... ``most`` encodes at once; shorter
    when an encode fails or runs out of time at some count (an NVENC session limit, say)."""
    argv = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "lavfi",
            "-i", _SOURCE, "-frames:v", str(_FRAMES), *video_args(encoder), "-f", "null", "-"]
    rates: list[float] = []
    for n in range(1, most + 1):
        t0 = time.monotonic()
        try:
            runs = await asyncio.gather(*(run_capture(argv, timeout_s) for _ in range(n)))
        except (TimeoutError, OSError):
            break
        if any(rc != 0 for rc, _, _ in runs):
            break
        rates.append(round(n * _FRAMES / max(time.monotonic() - t0, 1e-6), 1))
    return rates


def slots_for(rates: list[float], min_gain: float) -> int:
    """The most encodes at once such that each one added at least ``min_gain`` (0.15: 15 %)
    of throughput over one fewer; at least 1."""
    slots = 1
    for fewer, more in itertools.pairwise(rates):
        if more < fewer * (1 + min_gain):
            break
        slots += 1
    return slots
