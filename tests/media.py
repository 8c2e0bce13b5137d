"""Tiny generated media and the measurements tests make on real FFmpeg output."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from client.sample import make_video

__all__ = ["ffprobe", "gray_frame", "level_db", "make_tone", "make_video", "region_difference",
           "video_md5"]

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


def make_tone(path: Path, *, freq_hz: int, seconds: float) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"sine=f={freq_hz}:d={seconds}:sample_rate=48000", str(path)], check=True)
    return path


def level_db(path: Path, *, start_s: float, seconds: float, band_hz: int | None = None) -> float:
    """Mean level (dBFS) of the audio between ``start_s`` and ``start_s + seconds``, or of one
    frequency band of it; about -91 for digital silence."""
    band = f"bandpass=f={band_hz}:width_type=h:w=40"
    chain = f"{band},{band},{band}," if band_hz else ""  # cascaded: steep enough to separate
    err = subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-ss", f"{start_s}", "-t", f"{seconds}",
         "-i", str(path), "-map", "0:a:0", "-af", f"{chain}volumedetect", "-f", "null", "-"],
        check=True, capture_output=True, text=True).stderr
    for line in err.splitlines():
        if "mean_volume:" in line:
            return float(line.split("mean_volume:")[1].split()[0])
    raise AssertionError(f"no level measured: {err[-300:]}")


def video_md5(path: Path) -> str:
    """Digest of the video stream's packets: equal digests mean the stream was copied."""
    return subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-map", "0:v:0",
         "-c", "copy", "-f", "md5", "-"], check=True, capture_output=True, text=True).stdout
