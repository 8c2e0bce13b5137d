"""The FFmpeg child process: fed frames, a feeder that fails, a stall, a kill."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gpu_agent.ffmpeg import ProgressUpdate, media_env, run_capture, run_ffmpeg


def _argv(out: Path) -> list[str]:
    return ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-nostats",
            "-progress", "pipe:1", "-y", "-f", "rawvideo", "-pix_fmt", "gray", "-s", "64x64",
            "-framerate", "10", "-i", "pipe:0", "-c:v", "libx264", "-preset", "ultrafast",
            "-pix_fmt", "yuv420p", str(out)]


async def _ignore(update: ProgressUpdate) -> None:
    pass


async def test_fed_frames_are_encoded(tmp_path: Path) -> None:
    async def feed(stdin: asyncio.StreamWriter) -> None:
        for i in range(20):
            stdin.write(bytes([i * 10]) * 64 * 64)
            await stdin.drain()

    updates: list[ProgressUpdate] = []

    async def record(update: ProgressUpdate) -> None:
        updates.append(update)

    result = await run_ffmpeg(_argv(tmp_path / "o.mp4"), on_progress=record, feed=feed)
    assert result.returncode == 0 and updates[-1].done
    assert result.media_time_s == pytest.approx(1.9, abs=0.11)  # the last frame's start


async def test_a_failing_feeder_stops_ffmpeg_and_raises(tmp_path: Path) -> None:
    async def feed(stdin: asyncio.StreamWriter) -> None:
        stdin.write(bytes(64 * 64))
        await stdin.drain()
        raise ValueError("renderer broke")

    with pytest.raises(ValueError, match="renderer broke"):
        await asyncio.wait_for(run_ffmpeg(_argv(tmp_path / "o.mp4"), on_progress=_ignore,
                                          feed=feed), 10)
    assert not (tmp_path / "o.mp4").exists() or (tmp_path / "o.mp4").stat().st_size < 2000


async def test_no_progress_is_a_stall(tmp_path: Path) -> None:
    never = asyncio.Event()

    async def feed(stdin: asyncio.StreamWriter) -> None:
        await never.wait()  # FFmpeg waits for frames that never come

    result = await asyncio.wait_for(run_ffmpeg(_argv(tmp_path / "o.mp4"), on_progress=_ignore,
                                               feed=feed, stall_timeout_s=1.0), 10)
    assert result.stalled and result.returncode != 0


def test_media_tools_see_no_credentials() -> None:
    env = media_env({"PATH": "/usr/bin", "LC_ALL": "C", "NVIDIA_VISIBLE_DEVICES": "all",
                     "VIDFLEET_NATS_SEED": "SUAAAA", "VIDFLEET_NATS_JWT_0": "eyJ",
                     "CONTAINER_API_KEY": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    assert env == {"PATH": "/usr/bin", "LC_ALL": "C", "NVIDIA_VISIBLE_DEVICES": "all"}


async def test_a_spawned_media_tool_gets_the_clean_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIDFLEET_NATS_SEED", "SUSECRETSEEDVALUE")
    rc, out, _ = await run_capture(["env"], timeout_s=10)
    assert rc == 0 and b"SUSECRETSEEDVALUE" not in out and b"PATH=" in out

