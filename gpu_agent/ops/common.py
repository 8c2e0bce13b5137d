"""Pieces every operation's argv shares: encoder settings per output, containers, audio, and
filter-graph escaping.

Quality is one number on x264's CRF scale (0 best, 23 default, 51 worst), mapped to each
encoder's own scale so that the same number gives roughly the same visual quality:

| encoder | setting |
|---|---|
| libx264 | `-preset veryfast -crf q` |
| h264_nvenc | `-preset p4 -tune hq -rc vbr -cq max(q, 1)` (cq 0 means "automatic") |
| libx265 | `-preset fast -crf q+5` (x265's 28 looks like x264's 23) |
| hevc_nvenc | `-preset p4 -tune hq -rc vbr -cq max(q+3, 1)` |
| libsvtav1 | `-preset 8 -crf round(1.2 q + 7.4)` (23 -> 35, SVT-AV1's own default) |
| av1_nvenc | `-preset p4 -tune hq -rc vbr -cq round(1.2 q + 7.4)` (AV1's cq scale is 0-63) |
"""

from __future__ import annotations

__all__ = [
    "MP4_AUDIO_COPY",
    "WEBM_AUDIO_COPY",
    "audio_args",
    "container_args",
    "escape_filter_value",
    "escape_graph",
    "ffmpeg_prelude",
    "video_args",
]

# Audio codecs each container can carry as they are. Anything else (PCM from cameras...) is
# re-encoded, since copying it makes FFmpeg fail with "Could not find tag for codec".
MP4_AUDIO_COPY = frozenset({"aac", "mp3", "alac", "ac3", "eac3"})
WEBM_AUDIO_COPY = frozenset({"opus", "vorbis"})


def ffmpeg_prelude(ffmpeg: str, loglevel: str = "error") -> list[str]:
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", loglevel, "-nostats",
            "-progress", "pipe:1", "-y"]


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def video_args(encoder: str, quality: int = 23) -> list[str]:
    """Constant-quality settings for ``encoder`` at ``quality`` (x264 CRF scale)."""
    nvenc = ["-preset", "p4", "-tune", "hq", "-rc", "vbr"]
    av1 = str(_clamp(round(1.2 * quality + 7.4), 1, 63))
    settings = {
        "libx264": ["-preset", "veryfast", "-crf", str(quality)],
        "h264_nvenc": [*nvenc, "-cq", str(_clamp(quality, 1, 51))],
        "libx265": ["-preset", "fast", "-crf", str(_clamp(quality + 5, 0, 51)),
                    "-x265-params", "log-level=error", "-tag:v", "hvc1"],
        "hevc_nvenc": [*nvenc, "-cq", str(_clamp(quality + 3, 1, 51)), "-tag:v", "hvc1"],
        "libsvtav1": ["-preset", "8", "-crf", av1],
        "av1_nvenc": [*nvenc, "-cq", av1],
    }
    if encoder not in settings:
        raise ValueError(f"no settings for encoder {encoder!r}")
    return ["-c:v", encoder, *settings[encoder], "-pix_fmt", "yuv420p"]


def audio_args(container: str, source_codec: str | None) -> list[str]:
    """Copy the audio when ``container`` can hold ``source_codec`` (None: assume it can, until
    the probe says otherwise); else AAC for mp4, Opus for webm."""
    if container == "webm":
        if source_codec is None or source_codec in WEBM_AUDIO_COPY:
            return ["-c:a", "copy"]
        return ["-c:a", "libopus", "-b:a", "128k"]
    if source_codec is None or source_codec in MP4_AUDIO_COPY:
        return ["-c:a", "copy"]
    return ["-c:a", "aac", "-b:a", "192k"]


def container_args(container: str, path: str) -> list[str]:
    if container == "webm":
        return ["-f", "webm", path]
    return ["-movflags", "+faststart", "-f", "mp4", path]


def escape_filter_value(value: str) -> str:
    """Escape a value inside one filter's ``key=value:key=value`` arguments."""
    return "".join("\\" + c if c in "\\':" else c for c in value)


def escape_graph(value: str) -> str:
    """Escape a whole filter argument string for the filter-graph level (``, ; [ ]``)."""
    return "".join("\\" + c if c in "\\'[],;" else c for c in value)
