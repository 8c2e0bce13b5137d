"""Bad input fails that job with a specific message; the agent keeps running; nothing else is
affected."""

from __future__ import annotations

import io
import struct
import wave
import zlib
from pathlib import Path

import msgspec
import pytest

from broker.events import Failed, Succeeded
from broker.jobs import AddAudioJob, CaptionJob, Img2VidJob
from broker.topology import ensure_tenant
from tests.control_plane import TEST_TOPOLOGY

BROKEN_TIMESTAMP_SRT = "1\n00:00:00,500 -> 00:00:01,500\nHello\n"
NOT_UTF8_SRT = "1\n00:00:00,500 --> 00:00:01,500\nCaf\xe9\n".encode("latin-1")


async def _upload_bytes(client, tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return await client.upload_input(path)


@pytest.mark.parametrize(
    ("case", "code", "phrases"),
    [
        ("not_a_video", "invalid_input", ["video is not a readable video"]),
        ("srt_broken_timestamp", "invalid_input", ["line 2", "timing line"]),
        ("srt_not_utf8", "invalid_input", ["not UTF-8"]),
        ("srt_cues_after_end", "invalid_input", ["every cue starts after the video ends"]),
        ("missing_object", "invalid_input", ["no object", "upload it first"]),
    ],
)
async def test_bad_input_files(client, agent, media_dir: Path, tmp_path: Path, case: str,
                               code: str, phrases: list[str]) -> None:
    video = await client.upload_input(media_dir / "talk.mp4")
    srt = await client.upload_input(media_dir / "talk.srt")
    if case == "not_a_video":
        video = await _upload_bytes(client, tmp_path, "notes.mp4", b"just some text\n" * 100)
    elif case == "srt_broken_timestamp":
        srt = await _upload_bytes(client, tmp_path, "b.srt", BROKEN_TIMESTAMP_SRT.encode())
    elif case == "srt_not_utf8":
        srt = await _upload_bytes(client, tmp_path, "c.srt", NOT_UTF8_SRT)
    elif case == "srt_cues_after_end":
        srt = await _upload_bytes(client, tmp_path, "d.srt",
                                  b"1\n00:01:00,000 --> 00:01:02,000\nLate\n")
    elif case == "missing_object":
        srt = "obj:nobody/uploaded.srt"
    receipt = await client.submit(CaptionJob(video=video, srt=srt))
    failed = await client.result(receipt.job_id, timeout_s=30)
    assert isinstance(failed, Failed), failed
    assert failed.error.code == code
    for phrase in phrases:
        assert phrase in failed.error.message, failed.error.message
    assert failed.attempt == 1  # bad input is never retried

    good = await client.submit(CaptionJob(video=await client.upload_input(media_dir / "talk.mp4"),
                                          srt=await client.upload_input(media_dir / "talk.srt")))
    assert isinstance(await client.result(good.job_id, timeout_s=60), Succeeded)


@pytest.mark.parametrize(
    ("subject", "body", "code", "phrases"),
    [
        ("jobs.default.transcode.badop", b"{}", "unknown_operation",
         ["unknown operation 'transcode'", "caption"]),
        ("jobs.default.caption.nosrt", b'{"video": "obj:a.mp4"}', "invalid_job",
         ["missing required field `srt`"]),
        ("jobs.default.caption.wrongtype", b'{"video": 5, "srt": "obj:a"}', "invalid_job",
         ["Expected `str`", "$.video"]),
        ("jobs.default.caption.badref", b'{"video": "/etc/passwd", "srt": "obj:a"}', "invalid_job",
         ["$.video"]),
        ("jobs.default.caption.notjson", b"video=a.mp4", "invalid_job", ["not valid JSON"]),
    ],
)
async def test_malformed_job_documents(client, agent, js, media_dir: Path, subject: str,
                                       body: bytes, code: str, phrases: list[str]) -> None:
    await js.publish(subject, body)
    job_id = subject.rsplit(".", 1)[1]
    failed = await client.result(job_id, timeout_s=30)
    assert isinstance(failed, Failed)
    assert failed.error.code == code
    for phrase in phrases:
        assert phrase in failed.error.message, failed.error.message

    good = await client.submit(CaptionJob(video=await client.upload_input(media_dir / "talk.mp4"),
                                          srt=await client.upload_input(media_dir / "talk.srt")))
    assert isinstance(await client.result(good.job_id, timeout_s=60), Succeeded)
    assert agent.state != "stopped"  # the agent kept running through the bad job


def _huge_png_header() -> bytes:
    """A PNG whose header declares 30000x30000 (its pixels would be 2.7 GB decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0,
                                                             0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))


def _empty_wav() -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(b"")
    return out.getvalue()


async def test_an_image_too_large_to_probe_is_called_too_large(client, agent,
                                                                 tmp_path: Path) -> None:
    image = await _upload_bytes(client, tmp_path, "huge.png", _huge_png_header())
    receipt = await client.submit(Img2VidJob(image=image, duration_s=1, width=320, height=240))
    failed = await client.result(receipt.job_id, timeout_s=30)
    assert isinstance(failed, Failed) and failed.error.code == "invalid_input"
    assert "is 30000x30000, over the limit" in failed.error.message, failed.error.message


async def test_an_empty_audio_file_is_called_empty(client, agent, media_dir: Path,
                                                   tmp_path: Path) -> None:
    audio = await _upload_bytes(client, tmp_path, "empty.wav", _empty_wav())
    receipt = await client.submit(AddAudioJob(
        video=await client.upload_input(media_dir / "talk.mp4"), audio=audio))
    failed = await client.result(receipt.job_id, timeout_s=30)
    assert isinstance(failed, Failed) and failed.error.code == "invalid_input"
    assert "audio: holds no audio" in failed.error.message, failed.error.message
    assert "offset_s" not in failed.error.message


async def test_a_result_over_the_tenants_quota_fails_its_job_and_says_so(
        client, agent, js, media_dir: Path) -> None:
    """The result's chunks are stored up to 16 at a time, so a full bucket may be found only
    as the result is committed, after the agent has sent its outcome: the job still fails
    with the quota's code, not as a lost upload tried again elsewhere."""
    small = msgspec.structs.replace(TEST_TOPOLOGY, tenant_results_max_bytes=20_000)
    await ensure_tenant(js, small, "default", resize=True)
    receipt = await client.submit(CaptionJob(
        video=await client.upload_input(media_dir / "talk.mp4"),
        srt=await client.upload_input(media_dir / "talk.srt")))
    failed = await client.result(receipt.job_id, timeout_s=60)
    assert isinstance(failed, Failed) and failed.error.code == "results_quota_exceeded"
    assert "limit is 20000 bytes" in failed.error.message, failed.error.message
    assert failed.attempt == 1  # no other machine would do better
