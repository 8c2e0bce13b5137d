"""A machine vanishing mid-encode loses no job and shows the client one success."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from broker.events import Progress, Succeeded
from broker.heartbeats import decode_heartbeat
from broker.jobs import CaptionJob
from tests.conftest import agent_config, running_agent
from tests.media import make_video


def start_agent_process(nats_url: str, agent_id: str, work_dir: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "VIDFLEET_NATS_URL": nats_url,
        "VIDFLEET_AGENT_ID": agent_id,
        "VIDFLEET_WORK_DIR": str(work_dir),
        "VIDFLEET_PROGRESS_INTERVAL_S": "0.2",
        "VIDFLEET_HEARTBEAT_INTERVAL_S": "0.5",
        "VIDFLEET_FETCH_TIMEOUT_S": "2",
    }
    log = open(work_dir.with_suffix(".log"), "wb")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen([sys.executable, "-m", "gpu_agent"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_sigkill_mid_encode_redelivers_to_another_agent(
        nc, js, client, nats_server, media_dir: Path, tmp_path: Path) -> None:
    long_video = make_video(tmp_path / "long.mp4", seconds=60, size="640x360")
    heartbeats = await nc.subscribe("agents.victim.heartbeat")
    victim = start_agent_process(nats_server.url, "victim", tmp_path / "victim")
    try:
        decode_heartbeat((await heartbeats.next_msg(timeout=30)).data)  # it is up
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
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()

    successes = [e for e in seen if isinstance(e, Succeeded)]
    assert len(successes) == 1
    done = successes[0]
    assert done.agent_id == "rescuer" and done.attempt == 2
    assert abs(done.output.duration_s - 60.0) <= 0.1
    info = await js.stream_info("EVENTS", subjects_filter=f"events.{receipt.job_id}.succeeded.*")
    assert sum((info.state.subjects or {}).values()) == 1
    assert await client.result(receipt.job_id) == done
