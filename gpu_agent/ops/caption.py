"""caption: burn subtitles into a video with libass; audio is copied untouched.

The subtitle file reaching FFmpeg is one the agent wrote itself (parsed, cleaned, under a
generated name), and its path is escaped at both filter-graph levels: a crafted path or style
string would otherwise add filters to the graph (``movie=`` reads arbitrary files).
"""

from __future__ import annotations

from broker.jobs import CaptionStyle, Output
from gpu_agent.ops.common import (
    audio_args,
    container_args,
    escape_filter_value,
    escape_graph,
    ffmpeg_prelude,
    video_args,
)

__all__ = ["ass_style", "caption_argv", "subtitles_filter"]

DEFAULT_OUTPUT = Output()
DEFAULT_STYLE = CaptionStyle()
# libass lays SRT text out on a canvas 288 units high, whatever the video's size, so sizes
# given as a percentage of the height become units by multiplying by 2.88.
_CANVAS_UNITS = 288 / 100
# force_style's Alignment takes the legacy SSA numbers (2 bottom, 6 top, 10 middle, centred),
# not the ASS numpad ones: measured here, 8 lands mid-frame.
_ALIGNMENT = {"bottom": 2, "middle": 10, "top": 6}


def _ass_color(hex_rgb: str) -> str:
    r, g, b = hex_rgb[1:3], hex_rgb[3:5], hex_rgb[5:7]
    return f"&H00{b}{g}{r}".upper()  # ASS is &HAABBGGRR, AA=00 opaque


def ass_style(style: CaptionStyle) -> str:
    """The force_style string for ``style``: built only from validated, typed fields."""
    fields = {
        "FontName": style.font,
        "FontSize": f"{style.size_pct * _CANVAS_UNITS:.2f}",
        "Bold": "1" if style.bold else "0",
        "PrimaryColour": _ass_color(style.color),
        "OutlineColour": _ass_color(style.outline_color),
        "BackColour": _ass_color(style.outline_color),
        "BorderStyle": "3" if style.background else "1",
        "Outline": f"{style.outline_pct * _CANVAS_UNITS:.2f}",
        "Shadow": "0",
        "Alignment": str(_ALIGNMENT[style.position]),
        "MarginV": f"{round(style.margin_pct * _CANVAS_UNITS)}",
    }
    return ",".join(f"{k}={v}" for k, v in fields.items())


def subtitles_filter(srt_path: str, fonts_dir: str, style: CaptionStyle = DEFAULT_STYLE) -> str:
    args = ":".join([
        "filename=" + escape_filter_value(srt_path),
        "fontsdir=" + escape_filter_value(fonts_dir),
        "force_style=" + escape_filter_value(ass_style(style)),
    ])
    return "subtitles=" + escape_graph(args)


def caption_argv(
    *, ffmpeg: str, video_path: str, srt_path: str, output_path: str, encoder: str,
    fonts_dir: str, input_formats: str, output: Output = DEFAULT_OUTPUT,
    style: CaptionStyle = DEFAULT_STYLE, audio_codec: str | None = None,
    cuda_decode: bool = False,
) -> list[str]:
    """``encoder`` must encode ``output.codec``. ``audio_codec`` is the source's; None
    assumes it can be copied (checked once the input is probed)."""
    return [
        # warning: libass says which glyphs no font has only at that level
        *ffmpeg_prelude(ffmpeg, loglevel="warning"),
        # GPU decode when the probe proved it works; frames come back to the CPU for libass
        # (which is cheaper than compositing a subtitle canvas on the GPU: ffmpeg.md 3.1).
        *(["-hwaccel", "cuda"] if cuda_decode else []),
        "-format_whitelist", input_formats, "-protocol_whitelist", "file",
        "-i", video_path,
        # The first audio track only: the copy-or-encode choice is made for that one.
        "-map", "0:v:0", "-map", "0:a:0?",
        "-vf", subtitles_filter(srt_path, fonts_dir, style),
        *video_args(encoder, output.quality),
        *audio_args(output.container, audio_codec),
        *container_args(output.container, output_path),
    ]
