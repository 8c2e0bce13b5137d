"""A machine whose disk is full: the job it cannot hold is retried elsewhere and, if no
machine can, fails as ``disk_full``, saying so; the agent goes on."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.events import Failed, Retrying, Succeeded
from broker.jobs import CaptionJob
from client.api import Client
from gpu_agent.errors import classify
from tests.conftest import Outcomes, agent_config, running_agent
from tests.media import make_video
from tests.secure_stack import Secure


@contextlib.contextmanager
def _small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path`` (root only: the machines that run make test are)."""
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.timeout(90)
async def test_an_input_larger_than_the_free_disk_fails_as_disk_full(
        client: Client, nats_server: Secure, media_dir: Path, tmp_path: Path,
        outcomes: Outcomes) -> None:
    big = make_video(tmp_path / "big.mp4", seconds=6, size="1280x720")
    assert big.stat().st_size > 2 * 2**20
    job = CaptionJob(video=await client.upload_input(big),
                     srt=await client.upload_input(media_dir / "talk.srt"))
    with _small_disk(tmp_path / "disk", "2m") as disk:
        config = agent_config(nats_server, disk, max_retries=1, retry_delay_s=0.1)
        async with running_agent(config, outcomes):
            receipt = await client.submit(job)
            failed = await client.result(receipt.job_id, timeout_s=60)
            events = [e async for e in client.watch(receipt.job_id, timeout_s=10)]
            # The agent goes on: a job that fits runs next.
            small = await client.submit(CaptionJob(
                video=await client.upload_input(media_dir / "talk.mp4"), srt=job.srt,
                cache=False))
            assert isinstance(await client.result(small.job_id, timeout_s=60), Succeeded)
        assert [p.name for p in disk.iterdir()] == []  # nothing left on the full disk
    assert isinstance(failed, Failed) and failed.error.code == "disk_full"
    assert "disk is full" in failed.error.message and "TaskGroup" not in failed.error.message
    assert [e.error.code for e in events if isinstance(e, Retrying)] == ["disk_full"]


def test_a_full_disk_inside_an_exception_group_is_disk_full() -> None:
    full = OSError(28, "No space left on device")
    group = ExceptionGroup("unhandled errors in a TaskGroup", [ExceptionGroup("inner", [full])])
    assert (classify(group).code, classify(group).retryable) == ("disk_full", True)
    bug = classify(ExceptionGroup("x", [KeyError("k")]))
    assert bug.code == "internal_error" and "KeyError" in bug.message
