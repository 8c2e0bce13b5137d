"""``vidfleet job`` / ``vidfleet jobs``: where a job is, answered by the controller from what
only the fleet reads (job state, leases, the queue, events), scoped to the asking tenant."""

from __future__ import annotations

import json
from pathlib import Path

import nats.errors
import pytest

from broker.dispatch import Lease
from broker.events import (
    Cancelled,
    Failed,
    JobError,
    OutputInfo,
    Progress,
    Queued,
    Started,
    Succeeded,
    Timings,
)
from broker.jobs import CaptionJob
from client.api import Client, JobNotFound
from controller.job_status import Facts, job_status
from tests.conftest import Outcomes, agent_config, running_agent
from tests.media import make_video
from tests.secure_stack import Secure, Session, session, tenant_client
from tests.test_cli import vidfleet

NOW = 1_800_000_000.0
QUEUED = Queued(job_id="j1", tenant="t", at=NOW - 100, operation="caption", stream_seq=7)
STARTED = Started(job_id="j1", tenant="t", at=NOW - 40, operation="caption", agent_id="vf-a",
                  attempt=2, encoder="libx264")
LEASE = Lease(agent_id="vf-a", tenant="t", operation="caption", job_id="j1", attempt=2,
              stream_seq=7, ack_subject="$JS.ACK.x", granted_at=NOW - 41, price_per_hour=3.6)
OUTPUT = OutputInfo(bucket="results-t", name="j1/2/out.mp4", size_bytes=10, sha256="ab",
                    duration_s=3.0, width=320, height=240, video_codec="h264", container="mp4")


def test_a_queued_job_has_its_place_and_a_job_handed_out_has_none() -> None:
    ahead = job_status(Facts(job_id="j1", now=NOW, queued=QUEUED, queued_seq=7,
                             delivered_seq=4))
    assert ahead is not None
    assert (ahead.state, ahead.position, ahead.operation, ahead.queued_at) == (
        "queued", 3, "caption", NOW - 100)
    gap = job_status(Facts(job_id="j1", now=NOW, queued=QUEUED, queued_seq=7, delivered_seq=4,
                           gaps=frozenset({2, 5})))  # 5 was cancelled; 2 was handed out
    assert gap is not None and gap.position == 2
    back = job_status(Facts(job_id="j1", now=NOW, queued=QUEUED, queued_seq=7,
                            delivered_seq=9, state=STARTED))
    assert back is not None and (back.state, back.position, back.attempt) == ("waiting", None, 2)
    assert job_status(Facts(job_id="j1", now=NOW)) is None


def test_a_running_job_shows_its_attempt_progress_and_cost_so_far() -> None:
    old = Progress(job_id="j1", tenant="t", at=NOW - 50, agent_id="vf-b", attempt=1,
                   percent=90.0, media_time_s=9.0)
    now = Progress(job_id="j1", tenant="t", at=NOW - 1, agent_id="vf-a", attempt=2,
                   percent=42.0, media_time_s=4.2)
    for progress, percent in ((old, None), (now, 42.0)):  # an earlier attempt's is not this one's
        status = job_status(Facts(job_id="j1", now=NOW, queued=QUEUED, state=STARTED,
                                  lease=LEASE, progress=progress))
        assert status is not None
        assert (status.state, status.agent_id, status.attempt, status.encoder,
                status.started_at, status.percent) == ("running", "vf-a", 2, "libx264",
                                                       NOW - 40, percent)
        assert status.cost_usd == pytest.approx(41 * 0.001)


def test_an_ended_job_shows_its_outcome() -> None:
    done = Succeeded(job_id="j1", tenant="t", at=NOW, operation="caption", agent_id="vf-a",
                     attempt=2, encoder="libx264", output=OUTPUT, cost_usd=0.02,
                     timings=Timings(queue_wait_s=1, fetch_s=1, validate_s=1, encode_s=5,
                                     upload_s=1, total_s=8))
    failed = Failed(job_id="j1", tenant="t", at=NOW, agent_id="vf-a", attempt=1,
                    error=JobError(code="invalid_input", message="not a video"))
    cancelled = Cancelled(job_id="j1", tenant="t", at=NOW, reason="oops", cost_usd=0.01)
    s1, s2, s3 = (job_status(Facts(job_id="j1", now=NOW, queued=QUEUED, state=e))
                  for e in (done, failed, cancelled))
    assert s1 and (s1.state, s1.output, s1.cost_usd, s1.started_at) == (
        "succeeded", OUTPUT, 0.02, NOW - 8)
    assert s2 and (s2.state, s2.error, s2.operation) == ("failed", failed.error, "caption")
    assert s3 and (s3.state, s3.reason, s3.cost_usd) == ("cancelled", "oops", 0.01)


@pytest.mark.timeout(120)
async def test_status_and_listing_follow_jobs_through_their_lives(
        client: Client, nats_server: Secure, media_dir: Path, tmp_path: Path,
        outcomes: Outcomes) -> None:
    long = make_video(tmp_path / "long.mp4", seconds=20, size="640x360")
    srt = await client.upload_input(media_dir / "talk.srt")
    first = await client.submit(CaptionJob(video=await client.upload_input(long), srt=srt))
    short = CaptionJob(video=await client.upload_input(media_dir / "talk.mp4"), srt=srt)
    second, third = await client.submit(short), await client.submit(short)
    assert [(await client.status(r.job_id)).position for r in (first, second, third)] == [
        1, 2, 3]
    listed, truncated = await client.jobs()
    assert [s.job_id for s in listed] == [third.job_id, second.job_id, first.job_id]
    assert not truncated and {s.state for s in listed} == {"queued"}
    await client.cancel(second.job_id, reason="not needed")

    async with running_agent(agent_config(nats_server, tmp_path / "a", price_per_hour=3.6),
                             outcomes) as agent:
        async for event in client.watch(first.job_id, timeout_s=60):
            if isinstance(event, Progress):
                break
        running = await client.status(first.job_id)
        assert (running.state, running.agent_id, running.attempt) == (
            "running", agent.agent_id, 1)
        assert running.cost_usd > 0 and running.percent is not None
        waiting = await client.status(third.job_id)
        assert (waiting.state, waiting.position) == ("queued", 1)  # the cancelled one left
        rc, out, err = await vidfleet(nats_server, "job", first.job_id)
        assert rc == 0, err
        assert f"running attempt 1 on {agent.agent_id}" in out and "so far" in out
        for r in (first, third):
            await client.result(r.job_id, timeout_s=90)

    done = await client.status(first.job_id)
    assert done.state == "succeeded" and done.output is not None
    assert (await client.status(second.job_id)).reason == "not needed"
    succeeded, _ = await client.jobs(state="succeeded")
    assert [s.job_id for s in succeeded] == [third.job_id, first.job_id]
    rc, out, err = await vidfleet(nats_server, "jobs", "--state", "cancelled", "--json")
    assert rc == 0, err
    assert [json.loads(line)["job_id"] for line in out.splitlines()] == [second.job_id]
    with pytest.raises(JobNotFound):
        await client.status("never-submitted")


async def test_a_tenant_learns_only_about_its_own_jobs(secure: Secure, ctl: Session) -> None:
    async with session(secure, "client", "alice", tenant="alice") as a, \
            session(secure, "client", "bob", tenant="bob") as b:
        alice, bob = tenant_client(a, "alice"), tenant_client(b, "bob")
        await alice.submit(CaptionJob(video="obj:v.mp4", srt="obj:s.srt"), job_id="j1")
        assert (await alice.status("j1")).state == "queued"
        with pytest.raises(JobNotFound):  # bob's j1 is his own: there is none
            await bob.status("j1")
        assert await bob.jobs() == ([], False)
        for subject in ("query.alice.job.j1", "query.alice.jobs"):  # no import names alice's
            with pytest.raises(nats.errors.NoRespondersError):
                await b.nc.request(subject, b"", timeout=2)
