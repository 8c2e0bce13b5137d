"""Tiny generated media and the measurements tests make on real FFmpeg output."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from client.sample import make_video

__all__ = ["ffprobe", "gray_frame", "make_video", "region_difference"]

TWO_CUES_SRT = (
    "1\n00:00:00,500 --> 00:00:01,500\nHello vidfleet\n\n"
    "2\n00:00:02,000 --> 00:00:02,600\nSecond cue\n"
)
INSIDE_CUE_S = 1.0
OUTSIDE_CUES_S = 1.8


def ffprobe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
         str(path)], check=True, capture_output=True,
    ).stdout
    return json.loads(out)


def gray_frame(path: Path, at_s: float, size: tuple[int, int]) -> bytes:
    """One decoded frame at ``at_s`` as 8-bit grayscale, width*height bytes."""
    out = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-ss", f"{at_s:.3f}", "-i", str(path),
         "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
        check=True, capture_output=True,
    ).stdout
    assert len(out) == size[0] * size[1], f"unexpected frame size {len(out)}"
    return out


def region_difference(a: bytes, b: bytes, size: tuple[int, int], rows: range) -> float:
    """Mean absolute difference of two gray frames over a band of rows."""
    w = size[0]
    total = sum(abs(a[i] - b[i]) for y in rows for i in range(y * w, (y + 1) * w))
    return total / (len(rows) * w)
