"""Job requests: one frozen msgspec Struct per operation, decoded by the operation in the subject.

A job is published on ``jobs.<operation>.<job_id>`` with a JSON body holding that operation's
parameters; the id and operation live in the subject, so a plain ``nats pub`` is a complete
client. Fields may only be added with defaults; unknown fields are ignored so an older agent
survives a newer client. Getting a constraint wrong here lets bad input reach FFmpeg, where it
fails late and expensively instead of early with a clear message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "OPERATIONS",
    "AddAudioJob",
    "CaptionJob",
    "CaptionStyle",
    "Img2VidJob",
    "InputRef",
    "JobRequest",
    "Output",
    "decode_job",
    "encode_job",
    "inputs_named",
    "object_inputs",
    "object_ref",
    "operation_of",
    "parse_input_ref",
]

InputRef = Annotated[
    str,
    Meta(
        pattern=r"^(obj:[^\s]+|https?://[^\s]+)$",
        max_length=2048,
        description=(
            "Where an input comes from: 'obj:<name>' for an object in the inputs bucket "
            "(uploaded by the client), or an http(s) URL the agent downloads."
        ),
    ),
]


class Output(Struct, frozen=True, kw_only=True):
    """How the result is encoded. Every operation takes one (all fields optional)."""

    container: Annotated[Literal["mp4", "webm"], Meta(
        description=("mp4 (faststart) holds h264, hevc or av1; webm holds av1 (Opus or Vorbis "
                     "audio) when the video is encoded, or a copied vp8/vp9/av1 stream.")
    )] = "mp4"
    codec: Annotated[Literal["h264", "hevc", "av1"] | None, Meta(description=(
        "The video codec. Default: h264 in mp4, av1 in webm."))] = None
    quality: Annotated[int, Meta(ge=0, le=51, description=(
        "Constant quality on x264's CRF scale: 0 best, 18 visually lossless, 23 default, 51 "
        "worst. Mapped to each encoder's own scale (see docs/protocol.md)."))] = 23

    def __post_init__(self) -> None:
        if self.codec is None:  # `container: webm` alone is a complete request
            msgspec.structs.force_setattr(self, "codec",
                                          "av1" if self.container == "webm" else "h264")

    @property
    def video_codec(self) -> Literal["h264", "hevc", "av1"]:
        """The codec, resolved (never None once decoded or built)."""
        return self.codec or ("av1" if self.container == "webm" else "h264")



class _Job(Struct, frozen=True, kw_only=True):
    """What every operation takes."""

    webhook: Annotated[str, Meta(pattern=r"^https?://[^\s]+$", max_length=2048, description=(
        "Where the control plane POSTs the job's outcome (succeeded, failed or cancelled), "
        "signed per Standard Webhooks with the tenant's secret; default: the tenant's "
        "webhook, if the operator set one. Public internet addresses only."))] | None = None
    cache: Annotated[bool, Meta(description=(
        "Take the result of an earlier job of this tenant with the same inputs (by content), "
        "parameters and agent build at once, at no cost, instead of running it again (never "
        "for URL inputs, whose content is unknown until fetched). false: always run."))] = True


def _check_encoded_output(output: Output) -> None:
    """For operations that encode video: the container must hold the codec. (add_audio copies
    the video, so there it is the source's codec that matters, checked once probed.)"""
    if output.container == "webm" and output.codec != "av1":
        raise ValueError(f"output: a webm output holds only av1 video, not {output.codec}: "
                         "use container mp4, or codec av1")


Color = Annotated[str, Meta(pattern=r"^#[0-9A-Fa-f]{6}$", description="#RRGGBB")]
Percent = Annotated[float, Meta(ge=0.0, le=100.0)]


class CaptionStyle(Struct, frozen=True, kw_only=True):
    """How subtitles look: typed options only (never a raw libass style string)."""

    font: Annotated[str, Meta(pattern=r"^[A-Za-z0-9 ._-]{1,64}$", description=(
        "A font family the agent has (its fonts are listed in the error when one is not); "
        "glyphs missing from it come from other installed fonts."))] = "DejaVu Sans"
    size_pct: Annotated[float, Meta(ge=1.0, le=20.0, description=(
        "Text height as a percentage of the video's height."))] = 5.5
    color: Color = "#FFFFFF"
    outline_color: Color = "#000000"
    outline_pct: Annotated[float, Meta(ge=0.0, le=2.0, description=(
        "Outline thickness as a percentage of the video's height."))] = 0.5
    background: Annotated[bool, Meta(description=(
        "Draw an opaque box (in outline_color) behind the text instead of an outline."))] = False
    bold: bool = False
    position: Literal["bottom", "middle", "top"] = "bottom"
    margin_pct: Annotated[float, Meta(ge=0.0, le=40.0, description=(
        "Distance from the top or bottom edge, as a percentage of the height."))] = 5.0


class CaptionJob(_Job, frozen=True, kw_only=True):
    """Burn subtitles into a video. Audio is copied when the container can hold it."""

    video: InputRef
    srt: Annotated[InputRef, Meta(description=(
        "The subtitles: SubRip (.srt) or WebVTT (.vtt), UTF-8."))]
    style: CaptionStyle = CaptionStyle()
    output: Output = Output()

    def __post_init__(self) -> None:
        _check_encoded_output(self.output)


Volume = Annotated[float, Meta(ge=0.0, le=4.0, description="Gain: 1.0 leaves it as it is.")]


class AddAudioJob(_Job, frozen=True, kw_only=True):
    """Put an audio track on a video. The video stream is copied, never re-encoded, and the
    output lasts exactly as long as the video: the audio is trimmed, padded with silence or
    looped to fit."""

    video: InputRef
    audio: InputRef
    mode: Annotated[Literal["replace", "mix"], Meta(description=(
        "replace the video's audio, or mix the new audio with it (no normalisation: each "
        "keeps its own volume). mix on a video without audio acts as replace."))] = "replace"
    offset_s: Annotated[float, Meta(ge=-3600.0, le=3600.0, description=(
        "Positive: the new audio starts this late, after real silence. Negative: its first "
        "seconds are skipped."))] = 0.0
    when_shorter: Annotated[Literal["pad", "loop"], Meta(description=(
        "When the new audio ends before the video: pad with silence, or loop it."))] = "pad"
    audio_volume: Volume = 1.0
    video_volume: Annotated[float, Meta(ge=0.0, le=4.0, description=(
        "Gain of the video's own audio in mix mode."))] = 1.0
    fade_out_s: Annotated[float, Meta(ge=0.0, le=60.0, description=(
        "Fade the new audio out over the video's last seconds."))] = 0.0
    output: Annotated[Output, Meta(description=(
        "Only the container applies: the video is copied, so codec and quality are "
        "ignored, and the container must be able to hold the video's own codec."))] = Output()


Fraction = Annotated[float, Meta(ge=0.0, le=1.0)]
Zoom = Annotated[float, Meta(ge=1.0, le=4.0, description=(
    "1.0 shows the whole (fitted) image; 2.0 shows half its width and height."))]


class Img2VidJob(_Job, frozen=True, kw_only=True):
    """Turn one image into a video with a Ken Burns zoom (and optional pan), sub-pixel smooth:
    every frame is rendered from the image decoded once, at float precision, so the motion
    never snaps to whole pixels."""

    image: InputRef
    duration_s: Annotated[float, Meta(gt=0.0, le=600.0)] = 5.0
    fps: Annotated[int, Meta(ge=1, le=60)] = 30
    width: Annotated[int, Meta(ge=16, le=7680, description="Even.")] = 1920
    height: Annotated[int, Meta(ge=16, le=7680, description="Even.")] = 1080
    fit: Annotated[Literal["crop", "pad"], Meta(description=(
        "An image of another aspect ratio is cropped to fill the frame, or padded."))] = "crop"
    pad_color: Annotated[str, Meta(pattern=r"^#[0-9A-Fa-f]{6}$")] = "#000000"
    zoom_from: Zoom = 1.0
    zoom_to: Zoom = 1.25
    focus_x: Annotated[Fraction, Meta(description=(
        "The point the zoom moves toward, as a fraction of the frame (0.5, 0.5: centre). "
        "It keeps its place in the frame while the zoom changes."))] = 0.5
    focus_y: Fraction = 0.5
    pan_to_x: Annotated[Fraction | None, Meta(description=(
        "Pan: the focus point at the last frame (default: no pan)."))] = None
    pan_to_y: Fraction | None = None
    easing: Literal["linear", "ease_in", "ease_out", "ease_in_out"] = "linear"
    audio: Annotated[InputRef | None, Meta(description="An optional music bed.")] = None
    audio_volume: Volume = 1.0
    audio_fade_out_s: Annotated[float, Meta(ge=0.0, le=60.0)] = 1.0
    output: Output = Output()

    def __post_init__(self) -> None:
        _check_encoded_output(self.output)
        if self.width % 2 or self.height % 2:
            raise ValueError(f"width and height must be even (got {self.width}x"
                             f"{self.height}): 4:2:0 video needs even sizes")


JobRequest = CaptionJob | AddAudioJob | Img2VidJob

OPERATIONS: dict[str, type[Struct]] = {
    "caption": CaptionJob, "add_audio": AddAudioJob, "img2vid": Img2VidJob,
}
_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    op: msgspec.json.Decoder(cls) for op, cls in OPERATIONS.items()
}
_ENCODER = msgspec.json.Encoder()


def operation_of(job: Struct) -> str:
    for op, cls in OPERATIONS.items():
        if type(job) is cls:
            return op
    raise ValueError(f"not a job request: {type(job).__name__}")


def decode_job(operation: str, data: bytes) -> JobRequest:
    """Decode a job body for ``operation``.

    Raises ``LookupError`` for an unknown operation and ``msgspec.ValidationError`` /
    ``msgspec.DecodeError`` (whose messages name the offending field) for a bad body.
    """
    decoder = _DECODERS.get(operation)
    if decoder is None:
        known = ", ".join(sorted(OPERATIONS))
        raise LookupError(f"unknown operation {operation!r}; known operations: {known}")
    return decoder.decode(data)


def encode_job(job: JobRequest) -> bytes:
    return _ENCODER.encode(job)


def object_ref(name: str) -> str:
    return f"obj:{name}"


def object_inputs(job: JobRequest) -> tuple[str, ...]:
    """The object names a job reads (its ``obj:`` inputs): all that its holder may read."""
    refs = (getattr(job, field) for field in job.__struct_fields__)
    return tuple(sorted({ref[4:] for ref in refs
                         if isinstance(ref, str) and ref.startswith("obj:")}))


def inputs_named(operation: str, body: bytes) -> tuple[str, ...]:
    """The object names a stored job's body reads (none when it does not decode: the gateway
    checked it, and an agent will fail it)."""
    try:
        return object_inputs(decode_job(operation, body))
    except (LookupError, ValueError):
        return ()


def parse_input_ref(ref: str) -> tuple[str, str]:
    """-> ("object", name) or ("url", url)."""
    if ref.startswith("obj:"):
        return "object", ref[4:]
    return "url", ref
