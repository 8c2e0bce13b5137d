"""add_audio: put an audio track on a video, copying the video stream.

The output lasts exactly as long as the video stream: the new audio is delayed with real
silence (``adelay``, not an edit list some players ignore), padded (``apad=whole_dur``) or
looped (``-stream_loop``), then trimmed (``atrim``) to that length. ``-shortest`` is never
used: with audio shorter than the video it would cut the video. ``amix`` runs with
``normalize=0`` so each input keeps the volume the job asked for.
"""

from __future__ import annotations

from broker.jobs import AddAudioJob
from gpu_agent.media import AUDIO_FORMATS, INPUT_FORMATS, MediaInfo
from gpu_agent.ops.common import container_args, ffmpeg_prelude

__all__ = ["CONTAINER_VIDEO_CODECS", "add_audio_argv", "target_duration_s"]

# What each container can hold of a copied video stream.
CONTAINER_VIDEO_CODECS = {
    "mp4": frozenset({"h264", "hevc", "av1", "vp9", "mpeg4"}),
    "webm": frozenset({"vp8", "vp9", "av1"}),
}


def target_duration_s(video: MediaInfo) -> float:
    return video.video_duration_s or video.duration_s


def _new_audio_chain(job: AddAudioJob, duration_s: float) -> list[str]:
    chain = []
    if job.offset_s > 0:
        chain.append(f"adelay=delays={round(job.offset_s * 1000)}:all=1")
    if job.audio_volume != 1.0:
        chain.append(f"volume={job.audio_volume:.4f}")
    if job.when_shorter == "pad":
        chain.append(f"apad=whole_dur={duration_s:.6f}")
    chain.append(f"atrim=end={duration_s:.6f}")
    if job.fade_out_s > 0:
        fade_s = min(job.fade_out_s, duration_s)
        chain.append(f"afade=t=out:st={duration_s - fade_s:.6f}:d={fade_s:.6f}")
    return chain


def _filter_graph(job: AddAudioJob, video: MediaInfo, duration_s: float) -> str:
    new = "[1:a:0]" + ",".join(_new_audio_chain(job, duration_s))
    if job.mode == "mix" and video.has_audio:
        original = (f"[0:a:0]volume={job.video_volume:.4f},"
                    f"apad=whole_dur={duration_s:.6f}[orig]")
        return (f"{new}[new];{original};[orig][new]amix=inputs=2:duration=first:"
                f"dropout_transition=0:normalize=0,atrim=end={duration_s:.6f}[aout]")
    return f"{new}[aout]"


def add_audio_argv(*, ffmpeg: str, video_path: str, audio_path: str, output_path: str,
                   job: AddAudioJob, video: MediaInfo) -> list[str]:
    duration_s = target_duration_s(video)
    audio_input = ["-stream_loop", "-1"] if job.when_shorter == "loop" else []
    if job.offset_s < 0:
        audio_input += ["-ss", f"{-job.offset_s:.6f}"]
    audio_codec = (["-c:a", "libopus", "-b:a", "128k"] if job.output.container == "webm"
                   else ["-c:a", "aac", "-b:a", "192k"])
    return [
        *ffmpeg_prelude(ffmpeg),
        "-format_whitelist", INPUT_FORMATS, "-protocol_whitelist", "file", "-i", video_path,
        *audio_input,
        "-format_whitelist", AUDIO_FORMATS, "-protocol_whitelist", "file", "-i", audio_path,
        "-filter_complex", _filter_graph(job, video, duration_s),
        "-map", "0:v:0", "-map", "[aout]",
        "-c:v", "copy",
        # Apple players refuse HEVC in MP4 tagged hev1 (what a copy from Matroska gets).
        *(["-tag:v", "hvc1"] if video.video_codec == "hevc" and job.output.container == "mp4"
          else []),
        *audio_codec,
        *container_args(job.output.container, output_path),
    ]
