"""add_audio end to end: exact duration, real silence for the offset, both tones in a mix, the
video stream copied bit for bit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from broker.events import Failed, Succeeded
from broker.jobs import AddAudioJob, Output
from tests.media import ffprobe, level_db, make_tone, video_md5

VIDEO_TONE_HZ = 440  # the test video's own audio
MUSIC_HZ = 1000
SILENCE_DB = -60.0
AUDIBLE_DB = -35.0


@pytest.fixture(scope="module")
def music(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("music")
    return {"short": make_tone(d / "short.m4a", freq_hz=MUSIC_HZ, seconds=1.0),
            "long": make_tone(d / "long.wav", freq_hz=MUSIC_HZ, seconds=6.0)}


async def _run(client, job: AddAudioJob, tmp_path: Path) -> tuple[Succeeded, Path]:
    receipt = await client.submit(job)
    done = await client.result(receipt.job_id, timeout_s=60)
    assert isinstance(done, Succeeded), done
    out = await client.download(done.output, tmp_path / f"out.{job.output.container}")
    return done, out


def _durations(path: Path) -> dict[str, float]:
    probe = ffprobe(path)
    return {s["codec_type"]: float(s["duration"]) for s in probe["streams"]}


async def test_replace_with_offset_pads_to_the_video_length(client, agent, media_dir: Path,
                                                             music, tmp_path: Path) -> None:
    video = media_dir / "talk.mp4"
    job = AddAudioJob(video=await client.upload_input(video),
                      audio=await client.upload_input(music["short"]), offset_s=1.0)
    done, out = await _run(client, job, tmp_path)
    durations = _durations(out)
    video_s = _durations(video)["video"]
    assert abs(durations["video"] - video_s) < 0.04  # the same stream
    assert abs(durations["audio"] - video_s) < 0.05  # padded to the video, not cut short
    assert abs(done.output.duration_s - float(ffprobe(out)["format"]["duration"])) <= 0.05
    assert done.encoder == "copy" and video_md5(out) == video_md5(video)
    assert level_db(out, start_s=0.0, seconds=0.9) < SILENCE_DB  # real silence, no edit list
    assert level_db(out, start_s=1.1, seconds=0.8, band_hz=MUSIC_HZ) > AUDIBLE_DB
    assert level_db(out, start_s=1.1, seconds=0.8, band_hz=VIDEO_TONE_HZ) < SILENCE_DB
    assert level_db(out, start_s=2.2, seconds=0.7) < SILENCE_DB  # padded after the music


async def test_mix_keeps_both_and_trims_long_audio(client, agent, media_dir: Path, music,
                                                   tmp_path: Path) -> None:
    job = AddAudioJob(video=await client.upload_input(media_dir / "talk.mp4"),
                      audio=await client.upload_input(music["long"]), mode="mix",
                      audio_volume=0.5)
    _, out = await _run(client, job, tmp_path)
    assert abs(_durations(out)["audio"] - _durations(media_dir / "talk.mp4")["video"]) < 0.05
    # No normalisation: the video's tone keeps its level, the music is 6 dB down (volume 0.5).
    video_tone = level_db(media_dir / "talk.mp4", start_s=0.5, seconds=2.0,
                          band_hz=VIDEO_TONE_HZ)
    music_tone = level_db(music["long"], start_s=0.5, seconds=2.0, band_hz=MUSIC_HZ)
    assert level_db(out, start_s=0.5, seconds=2.0, band_hz=VIDEO_TONE_HZ) == pytest.approx(
        video_tone, abs=1.5)
    assert level_db(out, start_s=0.5, seconds=2.0, band_hz=MUSIC_HZ) == pytest.approx(
        music_tone - 6.0, abs=1.5)


async def test_loop_fills_the_video_with_short_audio(client, agent, media_dir: Path, music,
                                                     tmp_path: Path) -> None:
    job = AddAudioJob(video=await client.upload_input(media_dir / "talk.mp4"),
                      audio=await client.upload_input(music["short"]), when_shorter="loop")
    _, out = await _run(client, job, tmp_path)
    assert level_db(out, start_s=2.2, seconds=0.6, band_hz=MUSIC_HZ) > AUDIBLE_DB


async def test_audio_without_sound_and_impossible_containers_fail_clearly(
        client, agent, media_dir: Path, music, tmp_path: Path) -> None:
    silent_video = tmp_path / "no-audio.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(media_dir / "talk.mp4"),
                    "-an", "-c", "copy", str(silent_video)], check=True)
    bad_audio = AddAudioJob(video=await client.upload_input(media_dir / "talk.mp4"),
                            audio=await client.upload_input(silent_video))
    failed = await client.result((await client.submit(bad_audio)).job_id, timeout_s=30)
    assert isinstance(failed, Failed) and "audio: has no audio stream" in failed.error.message
    webm = AddAudioJob(video=await client.upload_input(media_dir / "talk.mp4"),
                       audio=await client.upload_input(music["short"]),
                       output=Output(container="webm", codec="av1"))
    failed = await client.result((await client.submit(webm)).job_id, timeout_s=30)
    assert isinstance(failed, Failed) and "webm output cannot hold it" in failed.error.message


async def test_matroska_video_is_cut_to_its_video_stream(client, agent, media_dir: Path,
                                                         music, tmp_path: Path) -> None:
    """Matroska keeps a stream's length only in a tag; the container's is the longest
    stream's. A 3 s video muxed with 6 s of audio must still give a 3 s output."""
    mkv = tmp_path / "long-audio.mkv"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(media_dir / "talk.mp4"),
                    "-i", str(music["long"]), "-map", "0:v", "-map", "1:a", "-c:v", "copy",
                    "-c:a", "libopus", str(mkv)], check=True)
    job = AddAudioJob(video=await client.upload_input(mkv),
                      audio=await client.upload_input(music["long"]))
    _, out = await _run(client, job, tmp_path)
    durations = _durations(out)
    assert durations["audio"] == pytest.approx(durations["video"], abs=0.05)
    assert durations["video"] == pytest.approx(3.0, abs=0.05)


@pytest.mark.parametrize(("offset_s", "phrase"), [
    (5.0, "after the video ends"), (-2.0, "skips all of the audio"),
])
async def test_offsets_that_leave_only_silence_are_refused(client, agent, media_dir: Path,
                                                           music, offset_s: float,
                                                           phrase: str) -> None:
    job = AddAudioJob(video=await client.upload_input(media_dir / "talk.mp4"),
                      audio=await client.upload_input(music["short"]), offset_s=offset_s)
    failed = await client.result((await client.submit(job)).job_id, timeout_s=30)
    assert isinstance(failed, Failed) and phrase in failed.error.message


async def test_a_vp9_webm_gets_its_audio_in_webm(client, agent, media_dir: Path, music,
                                                 tmp_path: Path) -> None:
    webm = tmp_path / "clip.webm"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(media_dir / "talk.mp4"),
                    "-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8",
                    "-c:a", "libopus", str(webm)], check=True)
    job = AddAudioJob(video=await client.upload_input(webm),
                      audio=await client.upload_input(music["short"]),
                      output=Output(container="webm"))  # no codec needed: the video is copied
    done, out = await _run(client, job, tmp_path)
    codecs = {s["codec_type"]: s["codec_name"] for s in ffprobe(out)["streams"]}
    assert codecs == {"video": "vp9", "audio": "opus"}
    assert done.output.container == "webm" and video_md5(out) == video_md5(webm)
