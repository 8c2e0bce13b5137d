"""The agent's build: everything besides the job itself that decides the bytes of a result.

A result is served from the cache (broker/result_cache.py) only to a job the fleet would run
on the same build, so this must change whenever a result could: FFmpeg (its version line and
configuration, which name libx264, libass and the rest), the encoder chosen for each codec
(NVENC or not), the fonts captions are drawn with, and our own code (the operations' recipes,
the renderer, the job decoder). Missing a part here serves a stale result after an upgrade;
adding a part that varies by machine for no reason only costs cache hits. The GPU model is not
a part: NVENC's settings are ours, and a different GPU generation encodes the same settings.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import broker.jobs
import gpu_agent
from gpu_agent.ffmpeg import media_env
from gpu_agent.probe import EncoderProbe

__all__ = ["build_id"]


async def build_id(ffmpeg: str, encoders: EncoderProbe, fonts_dir: str) -> str:
    """``b-`` and 16 hex digits, the same on every machine booted from one image."""
    h = hashlib.sha256()
    proc = await asyncio.create_subprocess_exec(
        ffmpeg, "-hide_banner", "-version", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, env=media_env(os.environ))
    out, _ = await proc.communicate()
    h.update(out)
    for codec, encoder in sorted(encoders.chosen.items()):
        h.update(f"\0{codec}={encoder}".encode())
    fonts = Path(fonts_dir)
    for font in sorted(p for p in fonts.rglob("*") if p.is_file()):
        h.update(f"\0{font.relative_to(fonts)}:{font.stat().st_size}".encode())
    code = [*sorted(Path(gpu_agent.__file__).parent.rglob("*.py")), Path(broker.jobs.__file__)]
    for source in code:
        h.update(b"\0" + source.read_bytes())
    return "b-" + h.hexdigest()[:16]
