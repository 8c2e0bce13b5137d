"""The broker restarted mid-job: nothing is lost or run twice under one attempt number, and a
CLI waiting on the job rides the restart out and exits 0 with the result (exit 1 must mean
the job failed)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nats.aio.client import Client as Nats

from broker.events import Started, Succeeded
from broker.subjects import DEFAULT_TENANT
from client.api import Client
from tests.conftest import Outcomes, agent_config, running_agent
from tests.media import make_video
from tests.secure_stack import Secure
from tests.test_cli import VIDFLEET


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_broker_restart_mid_job_loses_nothing_and_a_waiting_cli_rides_it_out(
        client: Client, nc: Nats, nats_server: Secure, media_dir: Path, tmp_path: Path,
        outcomes: Outcomes) -> None:
    video = make_video(tmp_path / "long.mp4", seconds=12, size="640x360")
    progress = await nc.subscribe("events.default.long.progress.*")
    creds = nats_server.creds_file("client", "cli", tenant=DEFAULT_TENANT)
    async with running_agent(agent_config(nats_server, tmp_path / "a"), outcomes):
        cli = await asyncio.create_subprocess_exec(
            *VIDFLEET, "--nats-url", nats_server.url, "--creds", str(creds), "submit",
            "caption", "--video", str(video), "--srt", str(media_dir / "talk.srt"),
            "--out", str(tmp_path / "out.mp4"), "--job-id", "long", "--no-cache",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        await progress.next_msg(timeout=60)  # encoding
        await asyncio.to_thread(nats_server.server.restart)
        out, err = await asyncio.wait_for(cli.communicate(), 150)
        assert cli.returncode == 0, err.decode()[-2000:]
        assert "output:" in out.decode() and (tmp_path / "out.mp4").stat().st_size > 0
    events = [e async for e in client.watch("long", timeout_s=30)]
    succeeded = [e for e in events if isinstance(e, Succeeded)]
    assert len(succeeded) == 1 and await client.result("long") == succeeded[0]
    attempts = [e.attempt for e in events if isinstance(e, Started)]
    assert len(attempts) == len(set(attempts))  # each attempt number once
    assert succeeded[0].attempt == attempts[-1]
