"""Pieces every operation's argv shares: the encoder settings and filter-graph escaping."""

from __future__ import annotations

__all__ = [
    "MP4_AUDIO_COPY",
    "escape_filter_value",
    "escape_graph",
    "ffmpeg_prelude",
    "h264_args",
    "mp4_audio_args",
    "mp4_output",
]


def ffmpeg_prelude(ffmpeg: str) -> list[str]:
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-nostats",
            "-progress", "pipe:1", "-y"]


def h264_args(encoder: str, quality: int = 23) -> list[str]:
    """Constant-quality H.264 on ``encoder``. NVENC's ``-cq`` and x264's ``-crf`` are on
    similar scales around 23; p4 and veryfast are each encoder's speed/quality middle."""
    if encoder == "h264_nvenc":
        return ["-c:v", "h264_nvenc", "-preset", "p4", "-rc", "vbr", "-cq", str(quality),
                "-b:v", "0", "-pix_fmt", "yuv420p"]
    if encoder == "libx264":
        return ["-c:v", "libx264", "-preset", "veryfast", "-crf", str(quality),
                "-pix_fmt", "yuv420p"]
    raise ValueError(f"no settings for encoder {encoder!r}")


# Audio codecs an MP4 can carry as they are; anything else (PCM from cameras, Vorbis...) is
# re-encoded to AAC, since copying it makes FFmpeg fail with "Could not find tag for codec".
MP4_AUDIO_COPY = frozenset({"aac", "mp3", "alac", "ac3", "eac3"})


def mp4_audio_args(audio_codec: str | None) -> list[str]:
    if audio_codec is None or audio_codec in MP4_AUDIO_COPY or not audio_codec:
        return ["-c:a", "copy"]
    return ["-c:a", "aac", "-b:a", "192k"]


def mp4_output(path: str) -> list[str]:
    return ["-movflags", "+faststart", "-f", "mp4", path]


def escape_filter_value(value: str) -> str:
    """Escape a value inside one filter's ``key=value:key=value`` arguments."""
    return "".join("\\" + c if c in "\\':" else c for c in value)


def escape_graph(value: str) -> str:
    """Escape a whole filter argument string for the filter-graph level (``, ; [ ]``)."""
    return "".join("\\" + c if c in "\\'[],;" else c for c in value)
