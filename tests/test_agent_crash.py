"""A machine vanishing mid-encode loses no job and shows the client one success; what the
dead agent left (its FFmpeg, its files) does not outlive it."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from broker.events import Progress, Succeeded
from broker.jobs import CaptionJob
from tests.conftest import agent_config, agent_process, running_agent
from tests.media import make_video


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_sigkill_mid_encode_redelivers_to_another_agent(
        nc, js, client, nats_server, media_dir: Path, tmp_path: Path) -> None:
    long_video = make_video(tmp_path / "long.mp4", seconds=60, size="640x360")
    work = tmp_path / "work"  # one machine's work directory, shared by its agents
    async with agent_process(nc, nats_server, "victim", work) as victim:
        receipt = await client.submit(CaptionJob(
            video=await client.upload_input(long_video),
            srt=await client.upload_input(media_dir / "talk.srt")))
        events = client.watch(receipt.job_id, timeout_s=150)
        async for event in events:
            if isinstance(event, Progress) and event.agent_id == "victim":
                ffmpeg = _ffmpeg_of(work / "vidfleet-agent-victim")
                assert ffmpeg
                victim.kill()  # SIGKILL while FFmpeg is encoding
                victim.wait()
                break
        # Its FFmpeg goes with it (the kernel kills it), not at the end of its encode.
        await asyncio.wait_for(_exits(ffmpeg), 2.0)
        assert (work / "vidfleet-agent-victim").exists()  # nobody could remove it yet
        seen = [event]
        async with running_agent(agent_config(nats_server, work, agent_id="rescuer")):
            # The next agent on the machine removes what the dead one left.
            assert not (work / "vidfleet-agent-victim").exists()
            async for event in events:
                seen.append(event)

    successes = [e for e in seen if isinstance(e, Succeeded)]
    assert len(successes) == 1
    done = successes[0]
    assert done.agent_id == "rescuer" and done.attempt == 2
    assert abs(done.output.duration_s - 60.0) <= 0.1
    info = await js.stream_info(
        "EVENTS", subjects_filter=f"events.default.{receipt.job_id}.succeeded.*")
    assert sum((info.state.subjects or {}).values()) == 1
    assert await client.result(receipt.job_id) == done
    assert list(work.iterdir()) == []  # the rescuer removed its own area as it stopped


def _ffmpeg_of(area: Path) -> list[int]:
    found = subprocess.run(["pgrep", "-af", str(area)], capture_output=True, text=True,
                           check=False).stdout
    return [int(line.split()[0]) for line in found.splitlines() if "ffmpeg" in line]


async def _exits(pids: list[int]) -> None:
    """Wait for processes (not our children) to exit: a pidfd becomes readable then."""
    loop = asyncio.get_running_loop()
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        gone = asyncio.Event()
        loop.add_reader(fd, gone.set)
        try:
            await gone.wait()
        finally:
            loop.remove_reader(fd)
            os.close(fd)
