"""One module per operation: how its inputs are fetched, validated, encoded and stored."""

from __future__ import annotations

from broker.jobs import AddAudioJob, CaptionJob, Img2VidJob, JobRequest
from gpu_agent.errors import JobFailure
from gpu_agent.operations import JobResult, Operations, WorkContext
from gpu_agent.pipelines import add_audio, caption, img2vid

__all__ = ["run_job"]


async def run_job(ops: Operations, job: JobRequest, ctx: WorkContext) -> JobResult:
    if isinstance(job, CaptionJob):
        return await caption.run(ops, job, ctx)
    if isinstance(job, AddAudioJob):
        return await add_audio.run(ops, job, ctx)
    if isinstance(job, Img2VidJob):
        return await img2vid.run(ops, job, ctx)
    raise JobFailure("unknown_operation", f"{type(job).__name__} is not implemented")
