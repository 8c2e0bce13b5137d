"""``vidfleet up --cluster 3``: three nats-servers in one JetStream cluster, every stream and
bucket (a tenant's made later too) replicated three times, clients that fail over by
themselves, and the JOBS stream's leader killed mid-run losing nothing (bench/faults.py's
``leader`` scenario, short)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from bench.faults import run
from broker.connect import connect
from broker.creds import LiveCredentials
from broker.events import Succeeded
from broker.jobs import CaptionJob
from client.api import Client
from client.sample import make_sample
from client.stack import Stack, StackOptions
from tests.test_creds_cli import cli


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_cluster_replicates_everything_and_clients_fail_over(tmp_path: Path) -> None:
    data = tmp_path / "data"
    video, srt = await asyncio.to_thread(make_sample, tmp_path / "media", 2, "320x180")
    async with Stack(StackOptions(data_dir=data, port=0, max_agents=1, cluster=3)) as stack:
        assert stack.url.count(",") == 2
        rc, _, err = await cli(data, stack.url, "creds", "client", "bob", "--expires", "1h",
                               "--out", str(tmp_path / "bob.creds"))
        assert rc == 0, err
        assert stack.creds_file is not None
        fleet = await connect(stack.url, name="t", credentials=LiveCredentials.from_creds(
            stack.creds_file.read_text()))
        try:
            replicas = {s.config.name: s.config.num_replicas
                        for s in await fleet.jetstream().streams_info()}
        finally:
            await fleet.close()
        # JOBS, EVENTS, every KV and object store, bob's (made after the stack) among them.
        assert {"JOBS", "EVENTS", "KV_jobstate", "OBJ_inputs-bob", "OBJ_results-bob",
                "EVENTS-bob"} <= set(replicas)
        assert {name: n for name, n in replicas.items() if n != 3} == {}

        async with await Client.connect(stack.url, creds_file=tmp_path / "bob.creds") as vf:
            job = CaptionJob(video=await vf.upload_input(video),
                             srt=await vf.upload_input(srt), cache=False)
            await vf.submit(job, job_id="before")
            assert isinstance(await vf.result("before", timeout_s=120), Succeeded)
            # The node this client is on dies: it goes on through another.
            url = vf._nc.connected_url
            assert url is not None
            node = next(s for s in stack.servers if s.port == url.port)
            assert node.pid is not None
            os.kill(node.pid, signal.SIGKILL)
            await vf.submit(job, job_id="after")
            done = await vf.result("after", timeout_s=120)
            assert isinstance(done, Succeeded)
            assert vf._nc.connected_url is not None and vf._nc.connected_url.port != url.port


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_the_jobs_leader_killed_mid_run_loses_nothing_and_rejoins(
        tmp_path: Path) -> None:
    figures = await run("leader", jobs=4, kills=1, seed=2, root=tmp_path)
    assert figures.faults == 1 and figures.rejoined_s is not None
    assert (figures.submitted, figures.succeeded, dict(figures.failed)) == (4, 4, {})
    assert (figures.lost, figures.duplicated, figures.bad_sha) == ([], [], [])
    assert (figures.processes_left, figures.areas_left) == ([], [])
