"""``vidfleet submit <operation>``: local files are uploaded, URLs passed to the agent; then
the job is followed with a progress display and its output downloaded (or, with --no-wait,
its id printed)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec

from broker.events import Succeeded
from broker.jobs import AddAudioJob, CaptionJob, CaptionStyle, Img2VidJob, JobRequest, Output
from client.api import Client
from client.commands import ClientConfig, open_client, run_command
from client.display import ProgressDisplay, exit_code

__all__ = ["follow_and_fetch", "submit"]

T = TypeVar("T", bound=msgspec.Struct)


@click.group()
def submit() -> None:
    """Submit a job. Local files are uploaded; http(s) URLs are fetched by the agent."""


def _common(suffix: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        options: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
            click.option("--out", type=click.Path(path_type=Path), default=None,
                         help=f"Where to save the result [default: <video>.{suffix}.<container>]."),
            click.option("--container", type=click.Choice(["mp4", "webm"]), default="mp4",
                         show_default=True),
            click.option("--job-id", default=None,
                         help="Your id for the job; resubmitting it runs once."),
            click.option("--wait/--no-wait", default=True, show_default=True,
                         help="--no-wait prints the job id and returns."),
            click.option("--timeout-s", type=float, default=None,
                         help="Give up waiting after this long."),
            click.option("--webhook", default=None,
                         help="POST the job's outcome here (signed; see `vidfleet webhooks`)."),
            click.option("--cache/--no-cache", default=True, show_default=True,
                         help="Take an identical earlier job's result at once, at no cost "
                         "(same inputs, parameters and agent build; never for URL inputs)."),
            click.pass_obj,
        ]
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


@submit.command("caption")
@click.option("--video", required=True, help="Local file or http(s) URL.")
@click.option("--srt", required=True, help="SubRip subtitles: local file or http(s) URL.")
@click.option("--codec", type=click.Choice(["h264", "hevc", "av1"]), default=None,
              help="The video codec [default: h264 in mp4, av1 in webm].")
@click.option("--quality", type=click.IntRange(0, 51), default=23, show_default=True,
              help="x264 CRF scale: lower is better.")
@click.option("--font", default="DejaVu Sans", show_default=True)
@click.option("--size-pct", type=float, default=5.5, show_default=True,
              help="Text height, % of the video's height.")
@click.option("--color", default="#FFFFFF", show_default=True)
@click.option("--outline-color", default="#000000", show_default=True)
@click.option("--outline-pct", type=float, default=0.5, show_default=True,
              help="Outline thickness, % of the video's height.")
@click.option("--background", is_flag=True, default=False,
              help="A box behind the text instead of an outline.")
@click.option("--bold", is_flag=True, default=False)
@click.option("--position", type=click.Choice(["bottom", "middle", "top"]), default="bottom",
              show_default=True)
@click.option("--margin-pct", type=float, default=5.0, show_default=True,
              help="Distance from the top or bottom edge, % of the height.")
@_common("captioned")
def submit_caption(cfg: ClientConfig, video: str, srt: str, codec: str | None, quality: int,
                   **params: Any) -> None:
    """Burn subtitles (SRT or WebVTT) into a video."""
    common = _split_common(params)
    output = _output(common["container"], codec, quality)
    webhook, cache = params.pop("webhook"), params.pop("cache")
    style = _build(CaptionStyle, **params)
    sys.exit(run_command(_submit(
        cfg, lambda refs: _build(CaptionJob, video=refs["video"], srt=refs["srt"],
                                 style=style, output=output, webhook=webhook, cache=cache),
        {"video": video, "srt": srt}, _out(common, video, "captioned"), common)))


@submit.command("img2vid")
@click.option("--image", required=True, help="Local file or http(s) URL.")
@click.option("--duration-s", type=float, default=5.0, show_default=True)
@click.option("--fps", type=int, default=30, show_default=True)
@click.option("--width", type=int, default=1920, show_default=True)
@click.option("--height", type=int, default=1080, show_default=True)
@click.option("--fit", type=click.Choice(["crop", "pad"]), default="crop", show_default=True)
@click.option("--pad-color", default="#000000", show_default=True,
              help="The bars' colour with --fit pad.")
@click.option("--zoom-from", type=float, default=1.0, show_default=True)
@click.option("--zoom-to", type=float, default=1.25, show_default=True)
@click.option("--focus-x", type=float, default=0.5, show_default=True)
@click.option("--focus-y", type=float, default=0.5, show_default=True)
@click.option("--pan-to-x", type=float, default=None)
@click.option("--pan-to-y", type=float, default=None)
@click.option("--easing", type=click.Choice(["linear", "ease_in", "ease_out", "ease_in_out"]),
              default="linear", show_default=True)
@click.option("--audio", default=None, help="An optional music bed (file or URL).")
@click.option("--audio-volume", type=float, default=1.0, show_default=True)
@click.option("--audio-fade-out-s", type=float, default=1.0, show_default=True,
              help="Fade the music out over the video's last seconds.")
@click.option("--codec", type=click.Choice(["h264", "hevc", "av1"]), default=None,
              help="The video codec [default: h264 in mp4, av1 in webm].")
@click.option("--quality", type=click.IntRange(0, 51), default=23, show_default=True)
@_common("kenburns")
def submit_img2vid(cfg: ClientConfig, image: str, audio: str | None, codec: str | None,
                   quality: int, **params: Any) -> None:
    """Turn an image into a video with a smooth Ken Burns zoom."""
    common = _split_common(params)
    output = _output(common["container"], codec, quality)
    inputs = {"image": image} | ({"audio": audio} if audio else {})
    sys.exit(run_command(_submit(
        cfg, lambda refs: _build(Img2VidJob, image=refs["image"], audio=refs.get("audio"),
                                 output=output, **params),
        inputs, _out(common, image, "kenburns"), common)))


@submit.command("add-audio")
@click.option("--video", required=True, help="Local file or http(s) URL.")
@click.option("--audio", required=True, help="Audio file (or a video with sound), or a URL.")
@click.option("--mode", type=click.Choice(["replace", "mix"]), default="replace",
              show_default=True)
@click.option("--offset-s", type=float, default=0.0, show_default=True,
              help="Start the audio this late (negative: skip its first seconds).")
@click.option("--when-shorter", type=click.Choice(["pad", "loop"]), default="pad",
              show_default=True)
@click.option("--audio-volume", type=float, default=1.0, show_default=True)
@click.option("--video-volume", type=float, default=1.0, show_default=True,
              help="The video's own audio, in mix mode.")
@click.option("--fade-out-s", type=float, default=0.0, show_default=True)
@_common("with-audio")
def submit_add_audio(cfg: ClientConfig, video: str, audio: str, **params: Any) -> None:
    """Put an audio track on a video (the video stream is copied)."""
    common = _split_common(params)
    output = _output(common["container"], "h264", 23)  # only the container applies
    sys.exit(run_command(_submit(
        cfg, lambda refs: _build(AddAudioJob, video=refs["video"], audio=refs["audio"],
                                 output=output, **params),
        {"video": video, "audio": audio}, _out(common, video, "with-audio"), common)))


def _split_common(params: dict[str, Any]) -> dict[str, Any]:
    return {k: params.pop(k) for k in ("out", "container", "job_id", "wait", "timeout_s")}


def _build(cls: type[T], **fields: Any) -> T:
    """The Struct, or a usage error naming the field (the same checks an agent makes)."""
    try:
        return msgspec.convert(fields, cls)
    except msgspec.ValidationError as exc:
        raise click.BadParameter(str(exc)) from None


def _output(container: str, codec: str | None, quality: int) -> Output:
    return Output(container=container, codec=codec, quality=quality)  # type: ignore[arg-type]


def _out(common: dict[str, Any], video: str, suffix: str) -> Path:
    if common["out"] is not None:
        return Path(common["out"])
    stem = Path(video.split("?")[0]).stem or "output"
    return Path(f"{stem}.{suffix}.{common['container']}")


async def _input(vf: Client, value: str) -> str:
    if value.startswith(("http://", "https://")):
        return value
    path = Path(value)
    if not path.is_file():
        raise click.BadParameter(f"no such file: {value}")
    return await vf.upload_input(path)


async def _submit(cfg: ClientConfig, build: Callable[[dict[str, str]], JobRequest],
                  inputs: dict[str, str], out: Path, common: dict[str, Any]) -> int:
    async with await open_client(cfg) as vf:
        refs = {name: await _input(vf, value) for name, value in inputs.items()}
        receipt = await vf.submit(build(refs), job_id=common["job_id"])
        if receipt.duplicate:
            click.echo(f"job {receipt.job_id} was already submitted; following it", err=True)
        if not common["wait"]:
            click.echo(receipt.job_id)
            return 0
        click.echo(f"job {receipt.job_id}", err=True)
        return await follow_and_fetch(vf, receipt.job_id, out, common["timeout_s"])


async def follow_and_fetch(vf: Client, job_id: str, out: Path, timeout_s: float | None) -> int:
    """Show the job's events until it ends; download a success to ``out``. Exit code."""
    display = ProgressDisplay()
    last = None
    async for event in vf.watch(job_id, timeout_s=timeout_s):
        display.show(event)
        last = event
    if not isinstance(last, Succeeded):
        return exit_code(last)
    path = await vf.download(last.output, out)
    click.echo(f"output: {path.resolve()}  (encoder {last.encoder})")
    return 0
