"""Cancel, end to end with auth on: a queued job never starts; a running job's FFmpeg is killed
within 2 s, its files and partial result deleted and its machine time charged; a cancel racing
the job's own end leaves exactly one outcome; a tenant can cancel only its own jobs."""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from pathlib import Path

import nats.errors
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from broker.events import Cancelled, Progress, Started, Succeeded
from broker.jobs import CaptionJob
from broker.subjects import EVENTS_STREAM, JOBS_CONSUMER, JOBS_STREAM, results_bucket
from client.api import Client, JobNotFound
from tests.conftest import Outcomes, agent_config, running_agent
from tests.media import make_video
from tests.secure_stack import Secure, Session, session, tenant_client


async def _caption(client: Client, video: Path, srt: Path) -> CaptionJob:
    return CaptionJob(video=await client.upload_input(video),
                      srt=await client.upload_input(srt))


async def _kinds(js: JetStreamContext, job_id: str, tenant: str = "default") -> list[str]:
    """The kind of every stored event of the job, in subject order."""
    info = await js.stream_info(EVENTS_STREAM, subjects_filter=f"events.{tenant}.{job_id}.>")
    return sorted(kind for subject, n in (info.state.subjects or {}).items()
                  for kind in [subject.split(".")[3]] * n)


async def _result_names(js: JetStreamContext, job_id: str) -> list[str]:
    store = await js.object_store(results_bucket("default"))
    try:
        return [o.name for o in await store.list() if o.name.startswith(f"{job_id}/")]
    except NotFoundError:  # no objects at all
        return []


def _processes_under(path: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-af", str(path)], capture_output=True, text=True,
                           check=False).stdout
    return [line for line in found.splitlines() if "ffmpeg" in line]


async def test_a_queued_job_is_cancelled_and_never_starts(
        client: Client, js: JetStreamContext, nats_server: Secure, media_dir: Path,
        tmp_path: Path, outcomes: Outcomes) -> None:
    first = await client.submit(await _caption(client, media_dir / "talk.mp4",
                                               media_dir / "talk.srt"))
    reply = await client.cancel(first.job_id, reason="sent by mistake")
    assert (reply.ok, reply.state, reply.was_running) == (True, "cancelled", False)
    assert (await js.stream_info(JOBS_STREAM)).state.messages == 0  # out of the backlog now
    done = await client.result(first.job_id, timeout_s=5)
    assert isinstance(done, Cancelled)
    assert (done.reason, done.agent_id, done.cost_usd, done.operation) == (
        "sent by mistake", "", 0.0, "caption")
    again = await client.cancel(first.job_id)  # idempotent: says what it is
    assert (again.ok, again.code, again.state) == (False, "already_ended", "cancelled")

    # An agent that comes afterwards runs the next job, never the cancelled one.
    second = await client.submit(await _caption(client, media_dir / "talk.mp4",
                                                media_dir / "talk.srt"))
    async with running_agent(agent_config(nats_server, tmp_path / "a"), outcomes):
        assert isinstance(await client.result(second.job_id, timeout_s=60), Succeeded)
    assert [o.job_id for o in outcomes.seen] == [second.job_id]
    assert await _kinds(js, first.job_id) == ["cancelled", "queued"]
    with pytest.raises(JobNotFound):
        await client.cancel("never-submitted")


@pytest.mark.timeout(90)
async def test_a_running_job_is_killed_within_2_s_cleaned_up_and_charged(
        client: Client, js: JetStreamContext, nats_server: Secure, media_dir: Path,
        tmp_path: Path, outcomes: Outcomes) -> None:
    video = make_video(tmp_path / "long.mp4", seconds=30, size="640x360")
    work = tmp_path / "agent-work"
    config = agent_config(nats_server, work, price_per_hour=3.6)  # $0.001 a second
    async with running_agent(config, outcomes) as agent:
        receipt = await client.submit(await _caption(client, video, media_dir / "talk.srt"))
        async for event in client.watch(receipt.job_id, timeout_s=60):
            if isinstance(event, Started):
                started_at = time.time()
            if isinstance(event, Progress):
                break  # FFmpeg is encoding
        assert _processes_under(work), "FFmpeg should be running"
        reply = await client.cancel(receipt.job_id, reason="wrong video")
        asked = time.monotonic()
        assert (reply.ok, reply.was_running) == (True, True)
        await outcomes.wait_for(receipt.job_id, "cancelled", timeout_s=2.0)
        assert time.monotonic() - asked <= 2.0
        assert _processes_under(work) == []  # FFmpeg and its whole group are gone
        # The job's directory with its partial output (the agent's own area stays).
        assert [p.name for p in agent.workspace.area.iterdir()] == [".lock"]
        done = await client.result(receipt.job_id, timeout_s=5)
        assert isinstance(done, Cancelled)
        assert (done.agent_id, done.attempt, done.reason) == (agent.agent_id, 1, "wrong video")
        ran_s = done.at - started_at
        assert done.price_per_hour == 3.6
        assert done.cost_usd == pytest.approx(ran_s * 0.001, abs=0.002)
        assert await _result_names(js, receipt.job_id) == []

        # The agent goes on with the next job.
        after = await client.submit(await _caption(client, media_dir / "talk.mp4",
                                                   media_dir / "talk.srt"))
        assert isinstance(await client.result(after.job_id, timeout_s=60), Succeeded)
    kinds = await _kinds(js, receipt.job_id)
    assert [k for k in kinds if k != "progress"] == ["cancelled", "queued", "started"]
    info = await js.consumer_info(JOBS_STREAM, JOBS_CONSUMER)
    assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 0, 0)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_cancel_storm_leaves_exactly_one_outcome_per_job(
        client: Client, js: JetStreamContext, nats_server: Secure, media_dir: Path,
        tmp_path: Path) -> None:
    """20 jobs cancelled at random moments (queued, starting, encoding, uploading, done):
    each ends with one outcome, the one the cancel's reply names."""
    rng = random.Random(20261202)
    work = tmp_path / "work"
    async with running_agent(agent_config(nats_server, work / "a1")), \
            running_agent(agent_config(nats_server, work / "a2")):
        receipts = [await client.submit(await _caption(client, media_dir / "talk.mp4",
                                                       media_dir / "talk.srt"))
                    for _ in range(20)]

        async def cancel_later(job_id: str) -> tuple[str, str]:
            await asyncio.sleep(rng.uniform(0.0, 8.0))  # a random moment in the job's life
            reply = await client.cancel(job_id)
            return job_id, "cancelled" if reply.ok else reply.state

        said = dict(await asyncio.gather(*(cancel_later(r.job_id) for r in receipts)))
        ended = {r.job_id: await client.result(r.job_id, timeout_s=120) for r in receipts}
    for job_id, outcome in ended.items():
        kinds = await _kinds(js, job_id)
        terminal = [k for k in kinds if k in ("succeeded", "failed", "cancelled")]
        assert terminal == [said[job_id]], (job_id, kinds)
        assert type(outcome).__name__.lower() == said[job_id]
        if isinstance(outcome, Cancelled):
            assert await _result_names(js, job_id) == []
    assert "cancelled" in said.values() and "succeeded" in said.values()  # both sides of it
    assert _processes_under(work) == []
    assert [p for p in work.rglob("*") if p.is_file()] == []
    info = await js.consumer_info(JOBS_STREAM, JOBS_CONSUMER)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)
    assert (await js.stream_info(JOBS_STREAM)).state.messages == 0


async def test_a_tenant_cancels_only_its_own_jobs(secure: Secure, ctl: Session) -> None:
    async with session(secure, "client", "alice", tenant="alice") as a, \
            session(secure, "client", "bob", tenant="bob") as b, \
            session(secure, "agent", "vf-a") as agent:
        alice, bob = tenant_client(a, "alice"), tenant_client(b, "bob")
        await alice.submit(CaptionJob(video="obj:v.mp4", srt="obj:s.srt"), job_id="j1")
        with pytest.raises(JobNotFound):  # bob's "j1" is his own namespace: there is none
            await bob.cancel("j1")
        with pytest.raises(nats.errors.NoRespondersError):  # no import names alice's jobs
            await b.nc.request("cancel.alice.j1", b"", timeout=2)
        await agent.denied("cancel.alice.j1",
                           lambda: agent.nc.request("cancel.alice.j1", b"", timeout=1))
        info = await ctl.nc.jetstream().stream_info(JOBS_STREAM)
        assert info.state.messages == 1  # still queued
        assert (await alice.cancel("j1")).ok
