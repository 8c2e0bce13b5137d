"""Caption styling, WebVTT, and scripts: real glyphs where fonts exist, a loud failure where
none does."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from broker.events import Failed, Succeeded
from broker.jobs import CaptionJob, CaptionStyle, Output
from gpu_agent.ops.caption import ass_style, subtitles_filter
from tests.media import INSIDE_CUE_S, ffprobe

SIZE = (320, 240)


def _frame(path: Path, at_s: float) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-ss", f"{at_s}",
                          "-i", str(path), "-frames:v", "1", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(SIZE[1], SIZE[0], 3).astype(np.int32)


def _text_mask(source: Path, out: Path) -> np.ndarray:
    """Pixels the subtitles changed at the cue's time."""
    return np.abs(_frame(out, INSIDE_CUE_S) - _frame(source, INSIDE_CUE_S)).sum(axis=2) > 150


async def _caption(client, media_dir: Path, tmp_path: Path, srt_text: str, name: str,
                   **job: object) -> Succeeded | Failed:
    srt = tmp_path / name
    srt.write_text(srt_text, encoding="utf-8")
    receipt = await client.submit(CaptionJob(
        video=await client.upload_input(media_dir / "talk.mp4"),
        srt=await client.upload_input(srt), output=Output(quality=10),  # little coding noise
        **job))  # type: ignore[arg-type]
    return await client.result(receipt.job_id, timeout_s=60)


CUE = "1\n00:00:00,500 --> 00:00:01,500\n{text}\n"


def test_style_is_built_from_typed_fields_only() -> None:
    style = ass_style(CaptionStyle(color="#FFCC00", size_pct=10, position="top", bold=True))
    assert "PrimaryColour=&H0000CCFF" in style and "FontSize=28.80" in style
    assert "Alignment=6" in style and "Bold=1" in style
    graph = subtitles_filter("/j/s.srt", "/f", CaptionStyle(font="Noto Sans"))
    assert graph.count(",") == graph.count("\\,")  # every comma escaped: one filter


async def test_position_and_colour_are_applied(client, agent, media_dir: Path,
                                               tmp_path: Path) -> None:
    done = await _caption(client, media_dir, tmp_path, CUE.format(text="STYLED TEXT"),
                          "s.srt", style=CaptionStyle(position="top", color="#FF0000",
                                                      size_pct=8, outline_pct=0))
    assert isinstance(done, Succeeded), done
    out = await client.download(done.output, tmp_path / "o.mp4")
    mask = _text_mask(media_dir / "talk.mp4", out)
    rows = np.nonzero(mask.sum(axis=1) > 5)[0]  # rows the text crosses
    assert rows.size and rows.max() < SIZE[1] // 3  # drawn at the top, not the bottom
    pixels = _frame(out, INSIDE_CUE_S)[mask]
    red = (pixels[:, 0] > 150) & (pixels[:, 1] < 100) & (pixels[:, 2] < 100)
    assert red.mean() > 0.3  # the glyphs are red


async def test_webvtt_subtitles(client, agent, media_dir: Path, tmp_path: Path) -> None:
    vtt = "WEBVTT\n\n00:00.500 --> 00:01.500 align:center\n<v Ann>Hello <b>there</b></v>\n"
    done = await _caption(client, media_dir, tmp_path, vtt, "s.vtt")
    assert isinstance(done, Succeeded), done
    out = await client.download(done.output, tmp_path / "o.mp4")
    assert _text_mask(media_dir / "talk.mp4", out).sum() > 100
    assert float(ffprobe(out)["format"]["duration"]) == pytest.approx(3.0, abs=0.1)


def _tofu_render(media_dir: Path, srt: Path, out: Path) -> None:
    """The same cue rendered with DejaVu alone and no font fallback: what boxes look like."""
    conf = out.with_suffix(".conf")
    conf.write_text('<?xml version="1.0"?><fontconfig></fontconfig>')
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y",
                    "-i", str(media_dir / "talk.mp4"),
                    "-vf", subtitles_filter(str(srt), "/usr/share/fonts/truetype/dejavu"),
                    "-c:v", "libx264", "-preset", "ultrafast", "-an", str(out)],
                   check=True, env={**os.environ, "FONTCONFIG_FILE": str(conf)})


@pytest.mark.parametrize("text", ["你好世界", "नमस्ते दुनिया", "Привет · Γειά · שלום · مرحبا"])
async def test_scripts_render_as_glyphs_not_boxes(client, agent, media_dir: Path,
                                                  tmp_path: Path, text: str) -> None:
    done = await _caption(client, media_dir, tmp_path, CUE.format(text=text), "s.srt")
    assert isinstance(done, Succeeded), done
    out = await client.download(done.output, tmp_path / "o.mp4")
    ours = _text_mask(media_dir / "talk.mp4", out)
    assert ours.sum() > 100  # something was drawn
    if text[0] in "你न":  # DejaVu has no CJK or Devanagari: without fallback, tofu
        srt = tmp_path / "s.srt"
        _tofu_render(media_dir, srt, tmp_path / "tofu.mp4")
        tofu = _text_mask(media_dir / "talk.mp4", tmp_path / "tofu.mp4")
        assert (ours != tofu).sum() > 0.3 * max(ours.sum(), tofu.sum())


async def test_characters_no_font_has_fail_loudly(client, agent, media_dir: Path,
                                                  tmp_path: Path) -> None:
    # Plane 16's private use area: no font has it (the BMP's does: Debian's prometheus package
    # brings Glyphicons, which draws U+E000-E1xx).
    failed = await _caption(client, media_dir, tmp_path, CUE.format(text="ok \U0010fffd"),
                            "s.srt")
    assert isinstance(failed, Failed) and failed.error.code == "missing_glyphs"
    assert "U+10FFFD" in failed.error.message


async def test_unknown_font_family_is_refused_with_the_list(client, agent, media_dir: Path,
                                                            tmp_path: Path) -> None:
    failed = await _caption(client, media_dir, tmp_path, CUE.format(text="hi"), "s.srt",
                            style=CaptionStyle(font="Comic Sans MS"))
    assert isinstance(failed, Failed) and failed.error.code == "invalid_input"
    assert "no font family 'Comic Sans MS'" in failed.error.message
    assert "DejaVu Sans" in failed.error.message
