"""Table tests of the pure pieces: SRT parsing, progress parsing, names, escaping, config."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from broker.config import ConfigError, Secret, load_config
from broker.dead_letters import scrub_log_tail
from broker.events import Queued, event_from_msg
from broker.jobs import decode_job
from broker.schema import render, schemas
from broker.subjects import job_subject, parse_event_subject, validate_job_id, validate_tenant
from controller.config import ControllerConfig
from gpu_agent.config import AgentConfig
from gpu_agent.ffmpeg import ProgressParser, classify_failure
from gpu_agent.ops.caption import caption_argv, subtitles_filter
from gpu_agent.ops.common import audio_args, video_args
from gpu_agent.srt import (
    Cue,
    SrtError,
    clip_cues,
    format_srt,
    parse_srt,
    parse_subtitles,
    parse_vtt,
)

GOOD = ("1\r\n00:00:00,500 --> 00:00:01,500\r\nHello\r\nworld\r\n\r\n"
        "2\r\n00:00:02.000 --> 00:00:02,600\r\nBye\r\n")


def test_the_event_schema_describes_only_bodies_that_exist() -> None:
    """A queued event has an empty body: a schema requiring its fields would make a strict
    client reject every queued event."""
    kinds = {v["properties"]["kind"]["enum"][0]
             for v in schemas()["event.json"]["$defs"].values() if "kind" in v["properties"]}
    assert kinds == {"started", "progress", "retrying", "succeeded", "failed", "cancelled",
                     "requeued"}


@pytest.mark.parametrize(("said", "kept"), [
    ("\x1b[1;31mError\x1b[0m opening input", "Error opening input"),
    ("reading https://u:pw@cdn.example/a.mp4?X-Amz-Signature=abc#t=3 failed",
     "reading https://cdn.example/a.mp4 failed"),
    ("auth token=abc123 refused; password: hunter2", "auth token=*** refused; password: ***"),
    ("bell\x07 and nul\x00 go, tabs\tstay", "bell and nul go, tabs\tstay"),
    ("x" * 1000, "x" * 400),
])
def test_a_log_tail_is_scrubbed_of_secrets_escapes_and_length(said: str, kept: str) -> None:
    assert scrub_log_tail(said) == kept


def test_a_log_tail_keeps_the_last_lines_within_its_size() -> None:
    text = "\n".join(f"line {n}" for n in range(2000))
    tail = scrub_log_tail(text, max_chars=100)
    assert len(tail) <= 100 and tail.endswith("line 1999")


def test_srt_parses_crlf_bom_and_dot_millis() -> None:
    cues = parse_srt(("\ufeff" + GOOD).encode())
    assert cues == [Cue(0.5, 1.5, "Hello\nworld"), Cue(2.0, 2.6, "Bye")]
    assert parse_srt(format_srt(cues).encode()) == cues


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no cues"),
        ("x\n00:00:01,000 --> 00:00:02,000\nHi\n", "line 1: expected a cue number"),
        ("1\n00:00:01,000 -> 00:00:02,000\nHi\n", "line 2: expected a timing line"),
        ("1\n00:00:61,000 --> 00:00:62,000\nHi\n", "line 2: expected a timing line"),
        ("1\n00:00:02,000 --> 00:00:01,000\nHi\n", "line 2: cue ends at or before it starts"),
        ("1\n00:00:01,000 --> 00:00:02,000\n\n", "cue has no text"),
        ("1\n", "line 2: expected a timing line"),
    ],
)
def test_srt_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(SrtError, match=message):
        parse_srt(text.encode())


def test_srt_strips_ass_override_tags() -> None:
    cues = parse_srt(b"1\n00:00:01,000 --> 00:00:02,000\n{\\pos(10,10)}{\\fs200}Hi\n")
    assert cues[0].text == "Hi"


def test_clip_cues_past_the_end() -> None:
    cues = [Cue(0, 1, "a"), Cue(2, 5, "b"), Cue(6, 7, "c")]
    kept, changed = clip_cues(cues, 3.0)
    assert kept == [Cue(0, 1, "a"), Cue(2, 3.0, "b")] and changed == 2


def test_progress_parser_blocks() -> None:
    p = ProgressParser()
    lines = ["frame=0", "out_time_us=N/A", "speed=N/A", "progress=continue",
             "frame=50", "out_time_us=2500000", "speed= 3.4x", "progress=continue",
             "out_time_us=10000000", "speed=3.1x", "progress=end"]
    updates = [u for u in (p.feed(line) for line in lines) if u]
    assert [(u.media_time_s, u.speed, u.done) for u in updates] == [
        (0.0, None, False), (2.5, 3.4, False), (10.0, 3.1, True)]


def test_job_ids_and_subjects() -> None:
    assert job_subject("acme", "caption", "a-B_9") == "jobs.acme.caption.a-B_9"
    for bad in ("", "a.b", "a b", "a*", "x" * 65, "a>"):
        with pytest.raises(ValueError, match="invalid job id"):
            validate_job_id(bad)
    assert parse_event_subject("events.acme.j1.progress.agent-1") == (
        "acme", "j1", "progress", "agent-1")
    for bad in ("", "Acme", "-x", "a.b", "x" * 33, "café"):
        with pytest.raises(ValueError, match="invalid tenant"):
            validate_tenant(bad)


def test_queued_event_from_server_headers() -> None:
    headers = {"Nats-Subject": "jobs.acme.caption.j1", "Nats-Sequence": "7",
               "Nats-Time-Stamp": "2026-11-28T00:43:26.697005155Z"}
    event = event_from_msg("events.acme.j1.queued.queue", headers, b"")
    assert event == Queued(job_id="j1", tenant="acme", at=1795826606.697005,
                           operation="caption", stream_seq=7)


HOSTILE = ["we:ird, name's [x];y\\z", "%{pts}", "a\nb", "movie=/etc/passwd", "x'];[y"]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_paths_stay_inside_one_filter(value: str) -> None:
    graph = subtitles_filter(f"/jobs/{value}/subs.srt", f"/fonts/{value}")
    # No unescaped graph separator survives: the graph is exactly one filter.
    unescaped = [c for i, c in enumerate(graph) if c in ",;[]" and graph[i - 1] != "\\"]
    assert unescaped == []
    argv = caption_argv(ffmpeg="ffmpeg", video_path=f"/jobs/{value}.mp4", srt_path="/j/s.srt",
                        output_path="/j/o.mp4", encoder="libx264", fonts_dir="/f",
                        input_formats="mp4")
    assert argv[argv.index("-i") + 1] == f"/jobs/{value}.mp4"  # an argv item, no shell


def test_config_names_the_variable_and_hides_secrets() -> None:
    class Cfg(msgspec.Struct, frozen=True):
        port: int = 1
        api_key: Secret | None = None

    cfg = load_config(Cfg, env={"VIDFLEET_PORT": "5", "VIDFLEET_API_KEY": "s3cret"})
    assert cfg.port == 5 and "s3cret" not in repr(cfg) and f"{cfg.api_key}" == "***"
    assert cfg.api_key.reveal() == "s3cret"
    with pytest.raises(ConfigError, match="VIDFLEET_PORT"):
        load_config(Cfg, env={"VIDFLEET_PORT": "many"})
    # The fleet's own settings say so the same way, once.
    for cls in (ControllerConfig, AgentConfig):
        with pytest.raises(ConfigError) as refused:
            load_config(cls, env={"VIDFLEET_SLOTS": "0"})
        assert str(refused.value) == "bad configuration in VIDFLEET_SLOTS: Expected `int` >= 1"


def test_checked_in_schemas_match_the_structs() -> None:
    schema_dir = Path(__file__).parent.parent / "docs" / "schema"
    for name, doc in schemas().items():
        assert (schema_dir / name).read_text(encoding="utf-8") == render(doc), (
            f"docs/schema/{name} is stale: run make schema")


@pytest.mark.parametrize(
    ("stderr", "code", "retryable"),
    [
        ("[h264_nvenc @ 0x1] OpenEncodeSessionEx failed: out of memory (10)", "encoder_busy",
         True),
        ("av_interleaved_write_frame(): No space left on device", "disk_full", True),
        ("[h264_nvenc @ 0x1] Cannot load libnvidia-encode.so.1", "encoder_unavailable", True),
        ("Invalid data found when processing input", "ffmpeg_failed", False),
    ],
)
def test_ffmpeg_failures_are_classified(stderr: str, code: str, retryable: bool) -> None:
    assert classify_failure(stderr) == (code, retryable)


def test_unknown_event_kinds_are_skipped_not_fatal() -> None:
    assert event_from_msg("events.acme.j1.paused.agent", None, b'{"kind":"paused"}') is None


@pytest.mark.parametrize(("container", "codec", "args"), [
    ("mp4", None, ["-c:a", "copy"]), ("mp4", "aac", ["-c:a", "copy"]),
    ("mp4", "mp3", ["-c:a", "copy"]), ("mp4", "pcm_s16le", ["-c:a", "aac", "-b:a", "192k"]),
    ("mp4", "vorbis", ["-c:a", "aac", "-b:a", "192k"]), ("webm", "opus", ["-c:a", "copy"]),
    ("webm", "aac", ["-c:a", "libopus", "-b:a", "128k"]),
])
def test_audio_is_copied_only_when_the_container_can_carry_it(
        container: str, codec: str | None, args: list[str]) -> None:
    assert audio_args(container, codec) == args


@pytest.mark.parametrize(("encoder", "quality", "setting"), [
    ("libx264", 23, ["-crf", "23"]), ("h264_nvenc", 23, ["-cq", "23"]),
    ("libx265", 23, ["-crf", "28"]), ("libx265", 51, ["-crf", "51"]),
    ("libsvtav1", 23, ["-crf", "35"]), ("libsvtav1", 0, ["-crf", "7"]),
    ("libsvtav1", 51, ["-crf", "63"]), ("hevc_nvenc", 23, ["-cq", "26"]),
])
def test_quality_maps_to_each_encoders_scale(encoder: str, quality: int,
                                            setting: list[str]) -> None:
    args = video_args(encoder, quality)
    assert args[:2] == ["-c:v", encoder]
    i = args.index(setting[0])
    assert args[i:i + 2] == setting and args[-2:] == ["-pix_fmt", "yuv420p"]


def test_gpu_decode_only_when_probed() -> None:
    common = dict(ffmpeg="ffmpeg", video_path="/j/v", srt_path="/j/s.srt",
                  output_path="/j/o.mp4", encoder="h264_nvenc", fonts_dir="/f",
                  input_formats="mp4")
    with_gpu = caption_argv(**common, cuda_decode=True)  # type: ignore[arg-type]
    assert with_gpu[with_gpu.index("-hwaccel") + 1] == "cuda"
    assert with_gpu.index("-hwaccel") < with_gpu.index("-i")
    assert "-hwaccel" not in caption_argv(**common)  # type: ignore[arg-type]


def test_cues_out_of_order_are_refused() -> None:
    text = ("1\n00:00:05,000 --> 00:00:06,000\nB\n\n"
            "2\n00:00:01,000 --> 00:00:02,000\nA\n")
    with pytest.raises(SrtError, match="cue 2 starts before cue 1"):
        parse_subtitles(text.encode())
    vtt = "WEBVTT\n\n00:05.000 --> 00:06.000\nB\n\n00:01.000 --> 00:02.000\nA\n"
    with pytest.raises(SrtError, match="cue 2 starts before cue 1"):
        parse_subtitles(vtt.encode())


@pytest.mark.parametrize("text", [
    "{x\\alpha&HFF&}BIG", "{\\pos(10,10)}BIG", '<font size="150" color="red">BIG</font>',
    "B{any\\fs200 junk}IG",
])
def test_every_styling_escape_hatch_is_removed(text: str) -> None:
    cue = parse_subtitles(f"1\n00:00:01,000 --> 00:00:02,000\n{text}\n".encode())[0]
    assert cue.text == "BIG"


def test_a_missing_blank_line_between_cues_is_an_error_not_burned_text() -> None:
    text = "1\n00:00:01,000 --> 00:00:02,000\nA\n2\n00:00:03,000 --> 00:00:04,000\nB\n"
    with pytest.raises(SrtError, match="line 4: the next cue starts without a blank line"):
        parse_subtitles(text.encode())
    vtt = "WEBVTT\n\n00:01.000 --> 00:02.000\nA\n00:03.000 --> 00:04.000\nB\n"
    with pytest.raises(SrtError, match="without a blank line"):
        parse_subtitles(vtt.encode())


def test_webvtt_ids_entities_crlf_and_blank_lines_of_spaces() -> None:
    vtt = ("WEBVTT - a title\r\n\r\nintro\r\n00:01.000 --> 00:02.000 line:0\r\n"
           "R&amp;D &lt;3\r\n   \r\n01:00:03.000 --> 01:00:04.000\r\n<i>B</i>")
    assert [(c.start_s, c.text) for c in parse_subtitles(vtt.encode())] == [
        (1.0, "R&D <3"), (3603.0, "B")]
    with pytest.raises(SrtError, match="must start with 'WEBVTT'"):
        parse_vtt("WEBVTTX\n\n00:01.000 --> 00:02.000\nA\n")


def test_the_webm_codec_rule_applies_only_where_video_is_encoded() -> None:
    webm = b'"output": {"container": "webm"}'
    h264 = b'"output": {"container": "webm", "codec": "h264"}'
    # `container: webm` alone is complete: the codec defaults to the one webm holds.
    caption = decode_job("caption", b'{"video": "obj:v", "srt": "obj:s", ' + webm + b"}")
    assert caption.output.codec == "av1"
    assert decode_job("caption", b'{"video": "obj:v", "srt": "obj:s"}').output.codec == "h264"
    with pytest.raises(msgspec.ValidationError, match="webm output holds only av1"):
        decode_job("caption", b'{"video": "obj:v", "srt": "obj:s", ' + h264 + b"}")
    with pytest.raises(msgspec.ValidationError, match="webm output holds only av1"):
        decode_job("img2vid", b'{"image": "obj:i", ' + h264 + b"}")
    job = decode_job("add_audio", b'{"video": "obj:v", "audio": "obj:a", ' + h264 + b"}")
    assert job.output.container == "webm"  # the copied stream's codec is checked once probed


@pytest.mark.parametrize(("text", "said"), [
    ("1\n00:00:01,000 --> 00:00:02,000\n\x00\x00\x00\n", "cue has no text"),
    ("1\n00:00:01,000 --> 00:00:02,000\n{\\an8}{\\pos(1,1)}\n", "cue has no text"),
    ("1\n00:00:01,000 --> 00:00:02,000\n{\\pos(1,\n1)}\n", "cue has no text"),
    ("WEBVTT\n\n00:01.000 --> 00:02.000\n{\\alpha&HFF&}\n", "cue has no text"),
    ("1\n00:00:01,000 --> 00:00:02,900\nHi\n{x}2\n{x}00:00:03,000 --> 00:00:04,000\nevil\n",
     "looks like a timing line"),
    ("1\n00:00:01,000 --> 00:00:02,000\n" + "x" * 2_000 + "\n", "at most 12 lines and 1000"),
    ("1\n00:00:01,000 --> 00:00:02,000\n" + "a\n" * 13, "at most 12 lines"),
])
def test_subtitles_that_show_nothing_or_smuggle_cues_are_refused(text: str, said: str) -> None:
    """What is checked is what FFmpeg will read: the text after tags are removed."""
    with pytest.raises(SrtError, match=re.escape(said)):
        parse_subtitles(text.encode())


def test_a_tag_split_over_lines_is_removed_whole() -> None:
    cue = parse_subtitles(b"1\n00:00:01,000 --> 00:00:02,000\nA{\\pos(\n10,10)}B\nC\x07\n")[0]
    assert cue.text == "AB\nC"
    assert format_srt([cue]).count("\n\n") == 1  # no blank line inside it for FFmpeg to split on


def test_too_much_text_on_screen_at_once_is_refused() -> None:
    many = "".join(f"{n}\n00:00:01,000 --> 00:00:09,000\n{'w' * 900}\n\n" for n in range(1, 6))
    with pytest.raises(SrtError, match="cue 5: the cues on screen with it hold 4500"):
        parse_subtitles(many.encode())
    one_after_another = "".join(
        f"{n}\n00:00:0{n},000 --> 00:00:0{n},900\n{'w' * 900}\n\n" for n in range(1, 6))
    assert len(parse_subtitles(one_after_another.encode())) == 5
