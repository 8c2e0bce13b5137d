"""What an MP4 or MOV file's header says of its video, read in-process, decoding nothing.

add_audio's FFmpeg command needs the video's length, codec and whether it has audio; asking
ffprobe costs a process start (about 0.1 s on a small machine) before FFmpeg's own. This is
the guess FFmpeg starts on while ffprobe validates the inputs (``Operations.encode``,
speculative): ffprobe's answer still builds the command that counts, and a guess that
differs from it costs only a restart. So it never needs to be right, only usually right, and
it must never fail: an input is untrusted, and anything unexpected in it gives ``None`` (no
guess, no speculation).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

from gpu_agent.media import MediaInfo

__all__ = ["guess_video"]

_MAX_MOOV = 16 * 1024 * 1024  # a header this large is not a file we guess about
_CODECS = {b"avc1": "h264", b"avc3": "h264", b"hvc1": "hevc", b"hev1": "hevc",
           b"av01": "av1", b"vp09": "vp9", b"mp4v": "mpeg4"}
_FORMAT = "mov,mp4,m4a,3gp,3g2,mj2"  # ffprobe's name for the family


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of each box in data[start:end]."""
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1:
            if at + 16 > end:
                return
            size, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            return
        yield kind, at + header, at + size
        at += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    return next(((s, e) for k, s, e in _boxes(data, start, end) if k == kind), None)


def _read_moov(path: Path) -> bytes | None:
    """The 'moov' box's payload, wherever it sits among the top-level boxes."""
    with path.open("rb") as f:
        size_of_file = f.seek(0, 2)
        at = 0
        while at + 8 <= size_of_file:
            f.seek(at)
            head = f.read(16)
            size, kind = struct.unpack_from(">I4s", head)
            header = 8
            if size == 1 and len(head) == 16:
                size, header = struct.unpack_from(">Q", head, 8)[0], 16
            elif size == 0:
                size = size_of_file - at
            if size < header:
                return None
            if kind == b"moov":
                if size > _MAX_MOOV:
                    return None
                f.seek(at + header)
                return f.read(size - header)
            at += size
    return None


def _track(data: bytes, start: int, end: int) -> tuple[bytes, float, bytes]:
    """(handler, duration in seconds as ffprobe reports it, first sample entry's type)."""
    mdia = _child(data, start, end, b"mdia")
    if mdia is None:
        raise ValueError("no mdia")
    handler = b""
    if (hdlr := _child(data, *mdia, b"hdlr")) is not None:
        handler = data[hdlr[0] + 8:hdlr[0] + 12]
    mdhd = _child(data, *mdia, b"mdhd")
    if mdhd is None:
        raise ValueError("no mdhd")
    if data[mdhd[0]] == 1:
        scale, duration = struct.unpack_from(">IQ", data, mdhd[0] + 20)
    else:
        scale, duration = struct.unpack_from(">II", data, mdhd[0] + 12)
    seconds = duration / scale  # what ffprobe reports for a video track with a plain edit list
    _plain_edits(data, start, end)
    entry = b""
    stsd = _find(data, mdia, (b"minf", b"stbl", b"stsd"))
    if stsd is not None and stsd[0] + 16 <= stsd[1]:
        entry = data[stsd[0] + 12:stsd[0] + 16]
    return handler, seconds, entry


def _plain_edits(data: bytes, start: int, end: int) -> None:
    """Raise ValueError unless the track's edit list is absent or one edit from its start
    (or from the encoder's delay, a B-frame shift): several edits, or an empty one (a
    delayed start), change what ffprobe reports in ways this guess does not follow."""
    elst = _find(data, (start, end), (b"edts", b"elst"))
    if elst is None:
        return
    (count,) = struct.unpack_from(">I", data, elst[0] + 4)
    fmt = ">Qq" if data[elst[0]] == 1 else ">Ii"
    if count != 1 or struct.unpack_from(fmt, data, elst[0] + 8)[1] < 0:
        raise ValueError("an edit list this guess does not follow")


def _find(data: bytes, span: tuple[int, int],
          path: tuple[bytes, ...]) -> tuple[int, int] | None:
    found: tuple[int, int] | None = span
    for kind in path:
        if found is None:
            return None
        found = _child(data, *found, kind)
    return found


def guess_video(path: Path) -> MediaInfo | None:
    """The video's length, codec and whether it has audio, from its MP4/MOV header; None
    when the file is anything else, or anything in it is unexpected."""
    try:
        moov = _read_moov(path)
        if moov is None or (mvhd := _child(moov, 0, len(moov), b"mvhd")) is None:
            return None
        if moov[mvhd[0]] == 1:
            scale, duration = struct.unpack_from(">IQ", moov, mvhd[0] + 20)
        else:
            scale, duration = struct.unpack_from(">II", moov, mvhd[0] + 12)
        tracks = [_track(moov, s, e) for k, s, e in _boxes(moov, 0, len(moov))
                  if k == b"trak"]
        movie_s = duration / scale
    except (OSError, ValueError, struct.error, ZeroDivisionError):
        return None
    video = [t for t in tracks if t[0] == b"vide"]
    if len(video) != 1 or video[0][2] not in _CODECS:
        return None
    _, video_s, entry = video[0]
    return MediaInfo(format_name=_FORMAT, duration_s=movie_s, has_video=True,
                     has_audio=any(t[0] == b"soun" for t in tracks),
                     video_codec=_CODECS[entry], video_duration_s=video_s)
