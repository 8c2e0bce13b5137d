"""A machine vanishing mid-encode loses no job and shows the client one success."""

from __future__ import annotations

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
    async with agent_process(nc, nats_server, "victim", tmp_path / "victim") as victim:
        receipt = await client.submit(CaptionJob(
            video=await client.upload_input(long_video),
            srt=await client.upload_input(media_dir / "talk.srt")))
        events = client.watch(receipt.job_id, timeout_s=150)
        async for event in events:
            if isinstance(event, Progress) and event.agent_id == "victim":
                victim.kill()  # SIGKILL while FFmpeg is encoding
                victim.wait()
                break
        seen = [event]
        async with running_agent(agent_config(nats_server, tmp_path / "rescuer",
                                              agent_id="rescuer")):
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
    # The victim's FFmpeg did not outlive it (it dies on its next write to the dead pipe).
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "victim")], check=False)
    assert leftover.returncode == 1, "the killed agent's FFmpeg is still running"
