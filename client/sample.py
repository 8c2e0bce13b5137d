"""Sample media for the demo: a generated test video with a tone, and a matching SRT."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["make_sample", "make_video"]


def _srt(seconds: int) -> str:
    lines = ["Hello from vidfleet", "Captions burned in with FFmpeg + libass",
             "Привет · Γειά σου · مرحبا", "Jobs travel over NATS JetStream"]
    step = seconds / len(lines)
    cues = []
    for k, text in enumerate(lines):
        start, end = k * step + 0.2, (k + 1) * step - 0.2
        cues.append(f"{k + 1}\n{_stamp(start)} --> {_stamp(end)}\n{text}\n")
    return "\n".join(cues)


def _stamp(t: float) -> str:
    ms = round(t * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def make_video(path: Path, *, seconds: float, size: str = "1280x720", fps: int = 25) -> Path:
    """A test video: testsrc2 with a 440 Hz tone, H.264 (ultrafast, yuv420p) + AAC."""
    subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=s={size}:r={fps}:d={seconds}",
         "-f", "lavfi", "-i", f"sine=f=440:d={seconds}",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-shortest", str(path)],
        check=True,
    )
    return path


def make_sample(directory: Path, seconds: int, size: str = "1280x720") -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    video = make_video(directory / "sample.mp4", seconds=seconds, size=size)
    srt = directory / "sample.srt"
    srt.write_text(_srt(seconds), encoding="utf-8")
    return video, srt
