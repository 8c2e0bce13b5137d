"""caption: burn subtitles into a video with libass; audio is copied untouched.

The subtitle file reaching FFmpeg is one the agent wrote itself (parsed, cleaned, under a
generated name), and its path is escaped at both filter-graph levels: a crafted path or style
string would otherwise add filters to the graph (``movie=`` reads arbitrary files).
"""

from __future__ import annotations

from broker.jobs import Output
from gpu_agent.ops.common import (
    audio_args,
    container_args,
    escape_filter_value,
    escape_graph,
    ffmpeg_prelude,
    video_args,
)

__all__ = ["DEFAULT_FONT", "caption_argv", "subtitles_filter"]

DEFAULT_FONT = "DejaVu Sans"
DEFAULT_OUTPUT = Output()
# libass sizes SRT text against a 288-line canvas: 16 is about 5.5 % of the frame height.
_STYLE = "FontName={font},FontSize=16,PrimaryColour=&H00FFFFFF,OutlineColour=&H00000000," \
         "BorderStyle=1,Outline=1.5,Shadow=0,MarginV=16,Alignment=2"


def subtitles_filter(srt_path: str, fonts_dir: str, font: str = DEFAULT_FONT) -> str:
    args = ":".join([
        "filename=" + escape_filter_value(srt_path),
        "fontsdir=" + escape_filter_value(fonts_dir),
        "force_style=" + escape_filter_value(_STYLE.format(font=font)),
    ])
    return "subtitles=" + escape_graph(args)


def caption_argv(
    *, ffmpeg: str, video_path: str, srt_path: str, output_path: str, encoder: str,
    fonts_dir: str, input_formats: str, output: Output = DEFAULT_OUTPUT,
    audio_codec: str | None = None,
) -> list[str]:
    """``encoder`` must encode ``output.codec``. ``audio_codec`` is the source's; None
    assumes it can be copied (checked once the input is probed)."""
    return [
        *ffmpeg_prelude(ffmpeg),
        "-format_whitelist", input_formats, "-protocol_whitelist", "file",
        "-i", video_path,
        "-map", "0:v:0", "-map", "0:a?",
        "-vf", subtitles_filter(srt_path, fonts_dir),
        *video_args(encoder, output.quality),
        *audio_args(output.container, audio_codec),
        *container_args(output.container, output_path),
    ]
