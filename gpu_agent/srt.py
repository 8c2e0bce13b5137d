"""A strict SubRip (.srt) parser, so a broken file fails with its line number instead of being
half-rendered by libass (which skips what it cannot parse and exits 0).

Accepted: UTF-8 (a BOM is fine), CRLF or LF, cues of an index line, a timing line
``HH:MM:SS,mmm --> HH:MM:SS,mmm`` (a ``.`` is accepted for ``,``) and one or more text lines,
separated by blank lines. Cues must have end > start. ASS override blocks like ``{\\pos(...)}``
are removed from the text: libass would obey them inside an SRT, letting a job's subtitle file
move, resize or hide text outside the typed styling options. Errors name a line but never quote
it: the file may have come from a URL, and what it holds must not reach the submitter.
"""

from __future__ import annotations

import heapq
import html
import itertools
import re
from dataclasses import dataclass

__all__ = [
    "MAX_CUE_CHARS", "MAX_CUE_LINES", "MAX_SCREEN_CHARS", "Cue", "SrtError", "clip_cues",
    "format_srt", "parse_srt", "parse_subtitles", "parse_vtt",
]

_TIMING = re.compile(
    r"^(\d{1,2}):([0-5]\d):([0-5]\d)[,.](\d{3})\s+-->\s+(\d{1,2}):([0-5]\d):([0-5]\d)[,.](\d{3})"
    r"(\s+.*)?$"
)
# libass obeys override tags anywhere inside braces ({x\alpha&HFF&} hides the text, \pos
# moves it), and FFmpeg turns <font size/color/face> into such tags: both are removed, so the
# typed style options are the only way to style. <b>, <i>, <u> stay.
_OVERRIDE = re.compile(r"\{[^}]*\}")  # across lines too: libass joins a cue's lines first
_FONT_TAG = re.compile(r"</?font\b[^>]*>", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# Bounds on what one cue, and everything on screen at once, may hold: libass lays out every
# glyph of every frame, and one 2 MB cue cost 70 s of agent time on a 3 s video.
MAX_CUE_LINES = 12
MAX_CUE_CHARS = 1_000
MAX_SCREEN_CHARS = 4_000


def _cue_text(lines: list[str], line_no: int) -> str:
    """A cue's text as it will be written for FFmpeg: styling tags removed (a block split
    over lines too, and any brace left over), control characters removed, blank lines
    dropped (a blank line would end the cue early in FFmpeg's reader). What remains is
    checked *after* cleaning, so ``{x}00:00:01,000 --> ...`` cannot turn into a cue of its
    own. Raises SrtError naming the cue's first text line."""
    joined = _OVERRIDE.sub("", _FONT_TAG.sub("", "\n".join(lines)))
    kept = [cleaned for raw in joined.replace("{", "").replace("}", "").split("\n")
            if (cleaned := _CONTROL.sub("", raw).rstrip()).strip()]
    if any("-->" in line for line in kept):
        raise SrtError(f"subtitles line {line_no}: a text line of this cue looks like a "
                       "timing line ('-->')")
    if not kept:
        raise SrtError(f"subtitles line {line_no}: cue has no text (once styling tags and "
                       "control characters are removed)")
    text = "\n".join(kept)
    if len(kept) > MAX_CUE_LINES or len(text) > MAX_CUE_CHARS:
        raise SrtError(f"subtitles line {line_no}: a cue holds at most {MAX_CUE_LINES} lines "
                       f"and {MAX_CUE_CHARS} characters (this one: {len(kept)} lines, "
                       f"{len(text)} characters)")
    return text


class SrtError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Cue:
    start_s: float
    end_s: float
    text: str


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse_srt(data: bytes, *, max_cues: int = 10_000) -> list[Cue]:
    """Parse ``data`` or raise SrtError naming the line and what was expected there."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SrtError(
            f"subtitles are not UTF-8 (byte {exc.start} is invalid); re-save the file as UTF-8"
        ) from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    cues: list[Cue] = []
    i, n = 0, len(lines)
    while i < n:
        if not lines[i].strip():
            i += 1
            continue
        if not lines[i].strip().isdigit():
            raise SrtError(f"subtitles line {i + 1}: expected a cue number")
        i += 1
        if i >= n or not (m := _TIMING.match(lines[i].strip())):
            got = "" if i < n else ", got the end of the file"
            raise SrtError(
                f"subtitles line {i + 1}: expected a timing line like "
                f"'00:00:01,000 --> 00:00:02,500'{got}"
            )
        start, end = _seconds(*m.group(1, 2, 3, 4)), _seconds(*m.group(5, 6, 7, 8))
        if end <= start:
            raise SrtError(f"subtitles line {i + 1}: cue ends at or before it starts")
        i += 1
        body: list[str] = []
        first = i + 1
        while i < n and lines[i].strip():
            if _TIMING.match(lines[i].strip()) or (
                    lines[i].strip().isdigit() and i + 1 < n
                    and _TIMING.match(lines[i + 1].strip())):
                raise SrtError(f"subtitles line {i + 1}: the next cue starts without a blank "
                               "line before it")
            body.append(lines[i])
            i += 1
        if not body:
            raise SrtError(f"subtitles line {i + 1}: cue has no text")
        cues.append(Cue(start, end, _cue_text(body, first)))
        if len(cues) > max_cues:
            raise SrtError(f"subtitles have more than {max_cues} cues")
    if not cues:
        raise SrtError("subtitles contain no cues")
    return cues


def clip_cues(cues: list[Cue], duration_s: float) -> tuple[list[Cue], int]:
    """Drop cues that start after the video ends and shorten those that run past it.

    Returns the kept cues and how many were changed, for a warning (never an error).
    """
    kept: list[Cue] = []
    changed = 0
    for cue in cues:
        if cue.start_s >= duration_s:
            changed += 1
            continue
        if cue.end_s > duration_s:
            changed += 1
            cue = Cue(cue.start_s, duration_s, cue.text)
        kept.append(cue)
    return kept, changed


def _stamp(t: float) -> str:
    ms = round(t * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def format_srt(cues: list[Cue]) -> str:
    return "".join(
        f"{k}\n{_stamp(c.start_s)} --> {_stamp(c.end_s)}\n{c.text}\n\n"
        for k, c in enumerate(cues, 1)
    )


_VTT_TIMING = re.compile(
    r"^((?:\d{1,2}:)?[0-5]\d:[0-5]\d\.\d{3})\s+-->\s+((?:\d{1,2}:)?[0-5]\d:[0-5]\d\.\d{3})"
    r"(\s+.*)?$"
)
_VTT_TAG = re.compile(r"</?(?:[biuv]|c|lang|ruby|rt)(?:[.\s][^>]*)?>|<\d[\d:.]*>")


def _vtt_seconds(stamp: str) -> float:
    parts = stamp.split(":")
    h = int(parts[0]) if len(parts) == 3 else 0
    m, rest = int(parts[-2]), parts[-1]
    s, ms = rest.split(".")
    return h * 3600 + m * 60 + int(s) + int(ms) / 1000


def parse_vtt(text: str, *, max_cues: int = 10_000) -> list[Cue]:
    """WebVTT: header, then cues (an optional id line, a timing line with optional settings,
    text). NOTE, STYLE and REGION blocks are skipped; markup tags are removed."""
    normalised = text.replace("\r\n", "\n").replace("\r", "\n")
    normalised = re.sub(r"\n[ \t]+\n", "\n\n", normalised)  # a line of spaces is blank
    blocks = normalised.split("\n\n")
    if not re.match(r"WEBVTT($|[ \t\n])", blocks[0]):
        raise SrtError("WebVTT must start with 'WEBVTT'")
    cues: list[Cue] = []
    line_no = blocks[0].count("\n") + 2
    for block in blocks[1:]:
        lines = [ln for ln in block.split("\n")]
        start_line = line_no
        line_no += len(lines) + 1
        lines = [ln for ln in lines if ln.strip()] if block.strip() else []
        if not lines or lines[0].split()[0] in ("NOTE", "STYLE", "REGION"):
            continue
        timing_at = 0 if "-->" in lines[0] else 1
        if timing_at >= len(lines) or not (m := _VTT_TIMING.match(lines[timing_at].strip())):
            raise SrtError(f"subtitles line {start_line + timing_at}: expected a WebVTT timing "
                           "line like '00:01.000 --> 00:02.500'")
        start, end = _vtt_seconds(m.group(1)), _vtt_seconds(m.group(2))
        if end <= start:
            raise SrtError(f"subtitles line {start_line + timing_at}: cue ends at or before "
                           "it starts")
        if any("-->" in ln for ln in lines[timing_at + 1:]):
            raise SrtError(f"subtitles line {start_line + timing_at + 1}: the next cue starts "
                           "without a blank line before it")
        body = [html.unescape(_VTT_TAG.sub("", ln)).strip() for ln in lines[timing_at + 1:]]
        cues.append(Cue(start, end, _cue_text(body, start_line + timing_at + 1)))
        if len(cues) > max_cues:
            raise SrtError(f"subtitles have more than {max_cues} cues")
    if not cues:
        raise SrtError("subtitles contain no cues")
    return cues


def parse_subtitles(data: bytes) -> list[Cue]:
    """SubRip or WebVTT (recognised by its 'WEBVTT' header), cues in time order."""
    head = data.lstrip(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"WEBVTT"):
        try:
            cues = parse_vtt(data.decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            raise SrtError(f"subtitles are not UTF-8 (byte {exc.start} is invalid); re-save "
                           "the file as UTF-8") from None
    else:
        cues = parse_srt(data)
    for n, (before, cue) in enumerate(itertools.pairwise(cues), start=2):
        if cue.start_s < before.start_s:
            raise SrtError(f"subtitles cue {n} starts before cue {n - 1}: cues must be in "
                           "time order")
    _check_screenfuls(cues)
    return cues


def _check_screenfuls(cues: list[Cue]) -> None:
    """At no moment may the cues on screen together hold more than MAX_SCREEN_CHARS."""
    showing: list[tuple[float, int]] = []  # a heap of (end, characters) of the cues on screen
    total = 0
    for n, cue in enumerate(cues, start=1):  # in start order
        while showing and showing[0][0] <= cue.start_s:
            total -= heapq.heappop(showing)[1]
        heapq.heappush(showing, (cue.end_s, len(cue.text)))
        total += len(cue.text)
        if total > MAX_SCREEN_CHARS:
            raise SrtError(f"subtitles cue {n}: the cues on screen with it hold {total} "
                           f"characters, over {MAX_SCREEN_CHARS}")
