"""A caption job end to end: client -> JetStream -> agent -> FFmpeg -> events -> result."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from broker.events import Progress, Queued, Started, Succeeded
from broker.jobs import CaptionJob, Output
from tests.conftest import agent_config, running_agent
from tests.media import INSIDE_CUE_S, OUTSIDE_CUES_S, ffprobe, gray_frame, region_difference

SIZE = (320, 240)
SUBTITLE_ROWS = range(200, 232)  # the bottom band where libass puts the text
TOP_ROWS = range(0, 60)


async def test_caption_job_burns_subtitles(client, agent, media_dir: Path, tmp_path: Path) -> None:
    video = await client.upload_input(media_dir / "talk.mp4")
    srt = await client.upload_input(media_dir / "talk.srt")
    receipt = await client.submit(CaptionJob(video=video, srt=srt))
    assert not receipt.duplicate

    events = [e async for e in client.watch(receipt.job_id, timeout_s=60)]
    kinds = [type(e) for e in events]
    assert kinds[0] is Queued and kinds[1] is Started and kinds[-1] is Succeeded, kinds
    done = events[-1]
    assert isinstance(done, Succeeded)
    assert done.encoder == "libx264" == events[1].encoder  # no NVENC on this machine
    percents = [e.percent for e in events if isinstance(e, Progress)]
    assert percents == sorted(percents)

    out = await client.download(done.output, tmp_path / "out.mp4")
    probe = ffprobe(out)
    source = ffprobe(media_dir / "talk.mp4")
    assert abs(float(probe["format"]["duration"]) - float(source["format"]["duration"])) <= 0.1
    assert {s["codec_type"] for s in probe["streams"]} == {"video", "audio"}
    assert done.output.size_bytes == out.stat().st_size
    assert done.output.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    video_stream = next(s for s in probe["streams"] if s["codec_type"] == "video")
    assert (done.output.width, done.output.height) == (video_stream["width"],
                                                       video_stream["height"]) == SIZE
    assert done.output.video_codec == video_stream["codec_name"] == "h264"
    assert abs(done.output.duration_s - float(probe["format"]["duration"])) <= 0.1

    inside_in = gray_frame(media_dir / "talk.mp4", INSIDE_CUE_S, SIZE)
    inside_out = gray_frame(out, INSIDE_CUE_S, SIZE)
    outside_in = gray_frame(media_dir / "talk.mp4", OUTSIDE_CUES_S, SIZE)
    outside_out = gray_frame(out, OUTSIDE_CUES_S, SIZE)
    burned = region_difference(inside_in, inside_out, SIZE, SUBTITLE_ROWS)
    clean = region_difference(outside_in, outside_out, SIZE, SUBTITLE_ROWS)
    untouched_top = region_difference(inside_in, inside_out, SIZE, TOP_ROWS)
    assert burned > 5.0, f"no subtitle inside the cue (diff {burned:.2f})"
    assert clean < 2.5, f"something drawn outside every cue (diff {clean:.2f})"
    assert untouched_top < 2.5, f"frame changed away from the subtitles (diff {untouched_top:.2f})"


async def test_hostile_characters_in_the_work_dir_path(client, js, nats_server, media_dir: Path,
                                                       tmp_path: Path) -> None:
    """Filter-graph separators in the agent's paths must not break or extend the graph."""
    hostile = tmp_path / "we:ird, name's [x];y\\z %{pts}"
    async with running_agent(agent_config(nats_server, hostile)):
        receipt = await client.submit(CaptionJob(
            video=await client.upload_input(media_dir / "talk.mp4"),
            srt=await client.upload_input(media_dir / "talk.srt")))
        done = await client.result(receipt.job_id, timeout_s=60)
    assert isinstance(done, Succeeded), done
    out = await client.download(done.output, tmp_path / "out.mp4")
    inside_in = gray_frame(media_dir / "talk.mp4", INSIDE_CUE_S, SIZE)
    assert region_difference(inside_in, gray_frame(out, INSIDE_CUE_S, SIZE), SIZE,
                             SUBTITLE_ROWS) > 5.0


async def test_audio_mp4_cannot_carry_is_reencoded(client, agent, media_dir: Path,
                                                  tmp_path: Path) -> None:
    """Camera files often carry PCM audio, which MP4 cannot hold as it is."""
    avi = tmp_path / "camera.avi"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(media_dir / "talk.mp4"),
                    "-c:v", "copy", "-c:a", "pcm_s16le", str(avi)], check=True)
    receipt = await client.submit(CaptionJob(video=await client.upload_input(avi),
                                             srt=await client.upload_input(media_dir / "talk.srt")))
    done = await client.result(receipt.job_id, timeout_s=60)
    assert isinstance(done, Succeeded), done
    out = await client.download(done.output, tmp_path / "out.mp4")
    codecs = {s["codec_type"]: s["codec_name"] for s in ffprobe(out)["streams"]}
    assert codecs == {"video": "h264", "audio": "aac"}


@pytest.mark.parametrize(("output", "video_codec", "format_name", "audio_codec"), [
    (Output(codec="hevc", quality=30), "hevc", "mov,mp4,m4a,3gp,3g2,mj2", "aac"),
    (Output(container="webm", codec="av1", quality=40), "av1", "matroska,webm", "opus"),
])
async def test_other_output_formats(client, agent, media_dir: Path, tmp_path: Path,
                                    output: Output, video_codec: str, format_name: str,
                                    audio_codec: str) -> None:
    receipt = await client.submit(CaptionJob(
        video=await client.upload_input(media_dir / "talk.mp4"),
        srt=await client.upload_input(media_dir / "talk.srt"), output=output))
    done = await client.result(receipt.job_id, timeout_s=120)
    assert isinstance(done, Succeeded), done
    assert done.encoder == {"hevc": "libx265", "av1": "libsvtav1"}[video_codec]
    assert done.output.name.endswith(f".{output.container}")
    out = await client.download(done.output, tmp_path / f"out.{output.container}")
    probe = ffprobe(out)
    codecs = {s["codec_type"]: s["codec_name"] for s in probe["streams"]}
    assert codecs == {"video": video_codec, "audio": audio_codec}
    assert probe["format"]["format_name"] == format_name
    assert (done.output.video_codec, done.output.container) == (video_codec, output.container)
    assert abs(float(probe["format"]["duration"]) - 3.0) <= 0.1
    inside = region_difference(gray_frame(media_dir / "talk.mp4", INSIDE_CUE_S, SIZE),
                               gray_frame(out, INSIDE_CUE_S, SIZE), SIZE, SUBTITLE_ROWS)
    assert inside > 5.0


async def test_a_video_only_result_reports_its_whole_duration(client, agent, media_dir: Path,
                                                              tmp_path: Path) -> None:
    """FFmpeg's last progress time is the last frame's start, one frame short of the end."""
    silent = tmp_path / "silent.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=s=320x240:r=25:d=1", "-c:v", "libx264", "-preset", "ultrafast",
                    "-pix_fmt", "yuv420p", str(silent)], check=True)
    receipt = await client.submit(CaptionJob(
        video=await client.upload_input(silent),
        srt=await client.upload_input(media_dir / "talk.srt")))
    done = await client.result(receipt.job_id, timeout_s=60)
    assert isinstance(done, Succeeded), done
    out = await client.download(done.output, tmp_path / "out.mp4")
    actual = float(ffprobe(out)["format"]["duration"])
    assert abs(done.output.duration_s - actual) <= 0.02, (done.output.duration_s, actual)
