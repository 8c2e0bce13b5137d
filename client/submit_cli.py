"""``vidfleet submit <operation>``: local files are uploaded, URLs passed to the agent; then
the job is followed with a progress display and its output downloaded (or, with --no-wait,
its id printed)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from broker.events import Failed, Succeeded
from broker.jobs import AddAudioJob, CaptionJob, JobRequest, Output
from client.api import Client
from client.commands import ClientConfig, run_command
from client.display import ProgressDisplay

__all__ = ["follow_and_fetch", "submit"]


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
            click.pass_obj,
        ]
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


@submit.command("caption")
@click.option("--video", required=True, help="Local file or http(s) URL.")
@click.option("--srt", required=True, help="SubRip subtitles: local file or http(s) URL.")
@click.option("--codec", type=click.Choice(["h264", "hevc", "av1"]), default="h264",
              show_default=True)
@click.option("--quality", type=click.IntRange(0, 51), default=23, show_default=True,
              help="x264 CRF scale: lower is better.")
@_common("captioned")
def submit_caption(cfg: ClientConfig, video: str, srt: str, codec: str, quality: int,
                   **common: Any) -> None:
    """Burn subtitles into a video."""
    output = _output(common["container"], codec, quality)
    sys.exit(run_command(_submit(
        cfg, lambda refs: CaptionJob(video=refs["video"], srt=refs["srt"], output=output),
        {"video": video, "srt": srt}, _out(common, video, "captioned"), common)))


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
    common = {k: params.pop(k) for k in ("out", "container", "job_id", "wait", "timeout_s")}
    output = _output(common["container"], "av1" if common["container"] == "webm" else "h264",
                     23)
    sys.exit(run_command(_submit(
        cfg, lambda refs: AddAudioJob(video=refs["video"], audio=refs["audio"], output=output,
                                      **params),
        {"video": video, "audio": audio}, _out(common, video, "with-audio"), common)))


def _output(container: str, codec: str, quality: int) -> Output:
    try:
        return Output(container=container, codec=codec, quality=quality)  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


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
    async with await Client.connect(cfg.nats_url) as vf:
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
    if isinstance(last, Failed):
        return 1
    assert isinstance(last, Succeeded)
    path = await vf.download(last.output, out)
    click.echo(f"output: {path.resolve()}  (encoder {last.encoder})")
    return 0
