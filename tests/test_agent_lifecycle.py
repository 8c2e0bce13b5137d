"""Graceful stop: SIGTERM finishes the job in hand, stops pulling, exits 0; a forced stop
hands the job back at once."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from broker.events import Progress, Succeeded
from broker.jobs import CaptionJob
from tests.conftest import agent_config, agent_process, running_agent
from tests.media import make_video


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_sigterm_finishes_the_running_job_then_exits_0(
        nc, js, client, nats_server, media_dir: Path, tmp_path: Path) -> None:
    video = make_video(tmp_path / "mid.mp4", seconds=30, size="640x360")
    async with agent_process(nc, nats_server.url, "term", tmp_path / "term") as proc:
        receipt = await client.submit(CaptionJob(video=await client.upload_input(video),
                                                 srt=await client.upload_input(
                                                     media_dir / "talk.srt")))
        second = await client.submit(CaptionJob(video=await client.upload_input(video),
                                                srt=await client.upload_input(
                                                    media_dir / "talk.srt")))
        async for event in client.watch(receipt.job_id, timeout_s=60):
            if isinstance(event, Progress):
                proc.send_signal(signal.SIGTERM)
                break
        done = await client.result(receipt.job_id, timeout_s=60)
        assert isinstance(done, Succeeded) and done.agent_id == "term" and done.attempt == 1
        assert await asyncio.wait_for(asyncio.to_thread(proc.wait), 30) == 0
    # It stopped pulling: the second job is still queued, untouched.
    info = await js.consumer_info("JOBS", "agents")
    assert info.num_pending == 1 and info.num_ack_pending == 0
    assert await _count_started(js, second.job_id) == 0


async def _count_started(js, job_id: str) -> int:
    info = await js.stream_info("EVENTS", subjects_filter=f"events.default.{job_id}.started.*")
    return sum((info.state.subjects or {}).values())


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_forced_stop_releases_the_job_to_another_agent(
        js, client, nats_server, media_dir: Path, tmp_path: Path, outcomes) -> None:
    video = make_video(tmp_path / "mid.mp4", seconds=30, size="640x360")
    config = agent_config(nats_server, tmp_path / "a1", agent_id="quitter", drain_timeout_s=0.0)
    async with running_agent(config, outcomes):
        receipt = await client.submit(CaptionJob(
            video=await client.upload_input(video),
            srt=await client.upload_input(media_dir / "talk.srt")))
        async for event in client.watch(receipt.job_id, timeout_s=60):
            if isinstance(event, Progress):
                break
    await outcomes.wait_for(receipt.job_id, "released")
    async with running_agent(agent_config(nats_server, tmp_path / "a2", agent_id="taker")):
        done = await client.result(receipt.job_id, timeout_s=90)
    assert isinstance(done, Succeeded) and done.agent_id == "taker" and done.attempt == 2
