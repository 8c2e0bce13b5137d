"""The MP4/MOV header guess add_audio starts FFmpeg on (gpu_agent/mp4_header.py): on the
containers FFmpeg writes it gives the very command ffprobe's answer gives (so the speculative
start holds), and on anything else, hostile files included, it gives None and never raises."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from broker.jobs import AddAudioJob
from gpu_agent.media import probe_media
from gpu_agent.mp4_header import guess_video
from gpu_agent.ops.add_audio import add_audio_argv

REF = "obj:x"


def ffmpeg(out: Path, *args: str) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=160x120:rate=25", *args, str(out)], check=True)
    return out


SINE = ("-f", "lavfi", "-i", "sine=d=4")


@pytest.mark.parametrize(("name", "args"), [
    ("h264_aac.mp4", (*SINE, "-t", "2.5", "-c:v", "libx264", "-c:a", "aac")),
    ("h264_faststart.mp4", (*SINE, "-t", "2", "-c:v", "libx264", "-c:a", "aac",
                            "-movflags", "+faststart")),
    ("silent.mp4", ("-t", "1.7", "-c:v", "libx264")),  # no audio: mix acts as replace
    ("bframes.mov", ("-t", "1.7", "-c:v", "libx264", "-r", "24")),  # an edit list shift
    ("ntsc.mp4", ("-t", "2.2", "-c:v", "libx264", "-bf", "0", "-r", "30000/1001")),
    ("mpeg4.mp4", (*SINE, "-t", "2", "-c:v", "mpeg4", "-c:a", "aac")),
    ("hevc.mp4", ("-t", "1", "-c:v", "libx265", "-x265-params", "log-level=error")),
])
async def test_the_guess_builds_the_command_ffprobe_builds(tmp_path: Path, name: str,
                                                           args: tuple[str, ...]) -> None:
    video = ffmpeg(tmp_path / name, *args)
    guess = guess_video(video)
    probed = await probe_media("ffprobe", str(video), label="video")
    assert guess is not None
    for mode in ("replace", "mix"):
        job = AddAudioJob(video=REF, audio=REF, mode=mode, fade_out_s=0.5)
        built = [add_audio_argv(ffmpeg="ffmpeg", video_path="v", audio_path="a",
                                output_path="o.mp4", job=job, video=info)
                 for info in (guess, probed)]
        assert built[0] == built[1]


def test_other_containers_and_hostile_files_give_no_guess(tmp_path: Path) -> None:
    mkv = ffmpeg(tmp_path / "a.mkv", "-t", "1", "-c:v", "libx264")
    good = ffmpeg(tmp_path / "b.mp4", "-t", "1", "-c:v", "libx264").read_bytes()
    scale_at = good.find(b"mvhd") + 4 + 12  # version, flags and two times come first
    cases = {
        "mkv": mkv.read_bytes(),
        "empty": b"",
        "noise": bytes(range(256)) * 64,
        "truncated": good[:good.find(b"moov") + 40],  # cut inside the header
        # A box that claims 2^64 - 1 bytes, and one shorter than its own header.
        "huge box": struct.pack(">I4sQ", 1, b"free", 2**64 - 1) + good,
        "short box": struct.pack(">I4s", 4, b"ftyp") + good,
        # A moov claiming 1 GB: not read into memory.
        "giant moov": struct.pack(">I4s", 1 << 30, b"moov") + b"\0" * 64,
        # A zero timescale: a division by zero in a naive reader.
        "zero scale": good[:scale_at] + b"\0\0\0\0" + good[scale_at + 4:],
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.mp4"
        path.write_bytes(data)
        assert guess_video(path) is None, name
    assert guess_video(tmp_path / "missing.mp4") is None
