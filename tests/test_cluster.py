"""``vidfleet up --cluster 3``: three nats-servers in one JetStream cluster, every stream and
bucket (a tenant's made later too) replicated three times, and the node leading JOBS killed
mid-job under a client connected to it: the job and the next one succeed, once each, and the
client goes on through another node. (bench/faults.py's ``leader`` scenario does the same with
more jobs; its figures are in docs/reliability.md.)"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from broker.connect import connect
from broker.creds import LiveCredentials
from broker.events import Failed, Succeeded
from broker.jobs import CaptionJob
from broker.subjects import JOBS_STREAM
from client.api import Client
from client.sample import make_sample
from client.stack import Stack, StackOptions
from tests.test_creds_cli import cli


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_cluster_replicates_everything_and_loses_no_job_with_its_leader(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    video, srt = await asyncio.to_thread(make_sample, tmp_path / "media", 6, "640x360")
    async with Stack(StackOptions(data_dir=data, port=0, max_agents=1, cluster=3)) as stack:
        assert stack.url.count(",") == 2
        rc, _, err = await cli(data, stack.url, "creds", "client", "bob", "--expires", "1h",
                               "--out", str(tmp_path / "bob.creds"))
        assert rc == 0, err
        assert stack.creds_file is not None
        fleet = await connect(stack.url, name="t", credentials=LiveCredentials.from_creds(
            stack.creds_file.read_text()))
        streams = await fleet.jetstream().streams_info()
        jobs = await fleet.jetstream().stream_info(JOBS_STREAM)
        progress = await fleet.subscribe("events.bob.during.progress.*")
        replicas = {s.config.name: s.config.num_replicas for s in streams}
        # JOBS, EVENTS, every KV and object store, bob's (made after the stack) among them.
        assert {"JOBS", "EVENTS", "KV_jobstate", "OBJ_inputs-bob", "OBJ_results-bob",
                "EVENTS-bob"} <= set(replicas)
        assert {name: n for name, n in replicas.items() if n != 3} == {}

        # Bob's client is on the node that leads JOBS, which dies mid-job.
        assert jobs.cluster is not None and jobs.cluster.leader
        leader = stack.servers[int(jobs.cluster.leader.removeprefix("n")) - 1]
        urls = sorted(stack.url.split(","), key=lambda u: u != leader.url)
        async with await Client.connect(",".join(urls), creds_file=tmp_path / "bob.creds",
                                        dont_randomize=True) as vf:
            assert vf._nc.connected_url is not None
            assert vf._nc.connected_url.port == leader.port
            job = CaptionJob(video=await vf.upload_input(video),
                             srt=await vf.upload_input(srt), cache=False)
            await vf.submit(job, job_id="during")
            await progress.next_msg(timeout=60)  # encoding
            assert leader.pid is not None
            os.kill(leader.pid, signal.SIGKILL)
            during = await vf.result("during", timeout_s=120)
            await vf.submit(job, job_id="after")
            after = await vf.result("after", timeout_s=120)
            assert isinstance(during, Succeeded) and isinstance(after, Succeeded)
            assert vf._nc.connected_url.port != leader.port  # it went on through another
            events = [e async for e in vf.watch("during", timeout_s=30)]
        await fleet.close()
        ends = [e for e in events if isinstance(e, Succeeded | Failed)]
        assert ends == [during]  # one outcome: nothing run twice to the end
