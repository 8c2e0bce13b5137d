"""ffprobe an input or output and check it against the job's needs and the configured limits.

Every input is probed before any encoder time is spent, with a format and protocol whitelist so
a "video" that is really a playlist pointing at local files is refused.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import msgspec
from PIL import Image

from gpu_agent.errors import invalid_input
from gpu_agent.ffmpeg import run_capture

__all__ = [
    "AUDIO_FORMATS",
    "INPUT_FORMATS",
    "MediaInfo",
    "MediaLimits",
    "probe_media",
    "require_audio",
    "require_image",
    "require_video",
]

INPUT_FORMATS = "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,mpegts,flv"
AUDIO_FORMATS = f"{INPUT_FORMATS},mp3,aac,wav,flac,ogg"


class _Stream(msgspec.Struct):
    codec_type: str = ""
    codec_name: str = ""
    width: int = 0
    height: int = 0
    avg_frame_rate: str = "0/0"
    r_frame_rate: str = "0/0"
    duration: str | None = None
    tags: dict[str, str] = {}


class _Format(msgspec.Struct, frozen=True):
    format_name: str = ""
    duration: str | None = None


class _Probe(msgspec.Struct):
    streams: list[_Stream] = []
    format: _Format = _Format()


_PROBE = msgspec.json.Decoder(_Probe)


@dataclass(frozen=True, slots=True)
class MediaInfo:
    format_name: str
    duration_s: float
    has_video: bool
    has_audio: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0
    video_codec: str = ""
    audio_codec: str = ""
    video_duration_s: float = 0.0  # the video stream's own, which the container's may exceed


@dataclass(frozen=True, slots=True)
class MediaLimits:
    max_duration_s: float = 4 * 3600.0
    max_width: int = 7680
    max_height: int = 4320
    max_fps: float = 120.0


def _rate(value: str) -> float:
    num, _, den = value.partition("/")
    try:
        return float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return 0.0


async def probe_media(ffprobe: str, path: str, *, label: str, whitelist: bool = True,
                      formats: str = INPUT_FORMATS, timeout_s: float = 30.0) -> MediaInfo:
    """Probe ``path``; raise an invalid-input JobFailure naming ``label`` if it is unreadable."""
    argv = [ffprobe, "-v", "error"]
    if whitelist:
        argv += ["-format_whitelist", formats, "-protocol_whitelist", "file"]
    argv += ["-print_format", "json", "-show_format", "-show_streams", path]
    try:
        rc, out, err = await run_capture(argv, timeout_s)
    except TimeoutError:
        raise invalid_input(f"{label}: ffprobe could not read it within {timeout_s:.0f}s") from None
    if rc != 0:
        reason = err.decode(errors="replace").strip().splitlines()
        detail = reason[-1] if reason else f"ffprobe exited {rc}"
        detail = detail.replace(path, "<file>")
        raise invalid_input(
            f"{label} is not a readable video or audio file ({detail}); "
            f"accepted formats: {formats}"
        )
    probe = _PROBE.decode(out)
    video = next((s for s in probe.streams if s.codec_type == "video"), None)
    audio = next((s for s in probe.streams if s.codec_type == "audio"), None)
    duration = _float(probe.format.duration) or _float(video.duration if video else None) or 0.0
    return MediaInfo(
        format_name=probe.format.format_name,
        duration_s=duration,
        has_video=video is not None,
        has_audio=audio is not None,
        audio_codec=audio.codec_name if audio else "",
        width=video.width if video else 0,
        height=video.height if video else 0,
        fps=_rate(video.avg_frame_rate) or _rate(video.r_frame_rate) if video else 0.0,
        video_codec=video.codec_name if video else "",
        video_duration_s=_stream_duration(video) or duration if video else 0.0,
    )


def _stream_duration(stream: _Stream) -> float | None:
    """The stream's own length. Matroska/WebM keep it only as a DURATION tag
    ("HH:MM:SS.nnnnnnnnn"); the container's duration is that of its longest stream."""
    if (seconds := _float(stream.duration)) is not None:
        return seconds
    tag = stream.tags.get("DURATION") or stream.tags.get("duration")
    if not tag:
        return None
    try:
        h, m, s = tag.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "N/A") else None  # type: ignore[arg-type]
    except ValueError:
        return None


def require_video(info: MediaInfo, limits: MediaLimits, *, label: str) -> None:
    """Raise a specific invalid-input JobFailure unless ``info`` is a usable video."""
    problem = _video_problem(info, limits)
    if problem:
        raise invalid_input(f"{label}: {problem}")


def require_image(info: MediaInfo, *, label: str, path: Path | None = None,
                  max_side_px: int = 16384, max_pixels: int = 50_000_000) -> None:
    """An image we are willing to decode: a decompression bomb fails here, not in memory.
    FFmpeg reports no size at all for a picture past its own limit (about 16k a side), so
    when it has none the size is read from the file's header (``path``), undecoded: a huge
    image is then called too large, not "not an image"."""
    too_big = (f"over the limit of {max_side_px} px a side and "
               f"{max_pixels // 1_000_000} MP")
    width, height = info.width, info.height
    if info.has_video and (width <= 0 or height <= 0) and path is not None:
        size = _header_size(path)
        if size is None:
            raise invalid_input(f"{label}: declares a size {too_big}")
        width, height = size
    if not info.has_video or width <= 0 or height <= 0:
        raise invalid_input(f"{label}: is not an image (JPEG, PNG, WebP, BMP or TIFF)")
    if max(width, height) > max_side_px or width * height > max_pixels:
        raise invalid_input(f"{label}: is {width}x{height}, {too_big}")


def _header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image's header, decoding no pixel: (0, 0) when it is no
    image Pillow knows, None when Pillow refuses to say (a size past its bomb limit) and the
    file is not a PNG, whose IHDR says it plainly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:  # lazy: reads the header only
                return image.size
        except Image.DecompressionBombError:
            pass
        except (OSError, ValueError, SyntaxError):
            return 0, 0
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return None


def require_audio(info: MediaInfo, limits: MediaLimits, *, label: str) -> None:
    if not info.has_audio:
        raise invalid_input(f"{label}: has no audio stream")
    if info.duration_s <= 0:
        raise invalid_input(f"{label}: holds no audio (its length is 0 s)")
    if info.duration_s > limits.max_duration_s:
        raise invalid_input(f"{label}: is {info.duration_s:.0f}s long, over the limit of "
                            f"{limits.max_duration_s:.0f}s")


def _video_problem(info: MediaInfo, limits: MediaLimits) -> str | None:
    if not info.has_video:
        return "has no video stream"
    if info.duration_s <= 0:
        return "has no known duration (is it a still image or a live stream?)"
    if info.duration_s > limits.max_duration_s:
        return f"is {info.duration_s:.0f}s long, over the limit of {limits.max_duration_s:.0f}s"
    if info.width > limits.max_width or info.height > limits.max_height:
        return (f"is {info.width}x{info.height}, over the limit of "
                f"{limits.max_width}x{limits.max_height}")
    if info.fps > limits.max_fps:
        return f"runs at {info.fps:.1f} fps, over the limit of {limits.max_fps:.0f}"
    return None

