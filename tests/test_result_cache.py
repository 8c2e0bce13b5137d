"""The result cache, end to end with auth on: the same caption twice runs FFmpeg once; the
second job succeeds at once, at no cost, with the first one's result. A job that opts out, a
new agent build, a result that is gone or another tenant all run the job."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from broker.events import Succeeded
from broker.jobs import CaptionJob
from broker.objects import delete_object
from broker.subjects import EVENTS_STREAM, JOBS_STREAM, results_bucket
from client.api import Client
from gpu_agent.fonts import find_fonts_dir
from tests.conftest import Outcomes, agent_config, running_agent
from tests.secure_stack import Secure, Session, session, tenant_client


async def _starts(js: JetStreamContext, job_id: str, tenant: str = "default") -> int:
    info = await js.stream_info(EVENTS_STREAM,
                                subjects_filter=f"events.{tenant}.{job_id}.started.*")
    return sum((info.state.subjects or {}).values())


@pytest.mark.timeout(120)
async def test_the_same_caption_twice_runs_ffmpeg_once(
        client: Client, agent, js: JetStreamContext, media_dir: Path, tmp_path: Path,
        outcomes: Outcomes) -> None:
    job = CaptionJob(video=await client.upload_input(media_dir / "talk.mp4"),
                     srt=await client.upload_input(media_dir / "talk.srt"))
    await client.submit(job, job_id="first")
    first = await client.result("first", timeout_s=60)
    assert isinstance(first, Succeeded) and not first.cached and first.build.startswith("b-")

    again = await client.submit(job, job_id="again")
    assert again.cached and not again.duplicate
    hit = await client.result("again", timeout_s=5)
    assert isinstance(hit, Succeeded)
    assert (hit.cached, hit.cached_from, hit.cost_usd, hit.attempt) == (True, "first", 0.0, 0)
    assert (hit.output, hit.encoder, hit.build) == (first.output, first.encoder, first.build)
    assert await _starts(js, "again") == 0  # no machine ran it
    queued = await js.stream_info(JOBS_STREAM, subjects_filter="jobs.default.*.again")
    assert not queued.state.subjects  # never in JOBS: no backlog, nothing rented for it
    assert (await client.status("again")).state == "succeeded"
    saved = await client.download(hit.output, tmp_path / "again.mp4")
    assert saved.stat().st_size == first.output.size_bytes

    # Same bytes under other names are the same inputs; a resubmitted id stays a duplicate.
    renamed = CaptionJob(video=await client.upload_input(media_dir / "talk.mp4", "v2.mp4"),
                         srt=await client.upload_input(media_dir / "talk.srt", "s2.srt"))
    assert (await client.submit(renamed, job_id="renamed")).cached
    assert (await client.submit(job, job_id="again")).duplicate

    # Opting out, or other parameters, run FFmpeg again.
    await client.submit(CaptionJob(video=job.video, srt=job.srt, cache=False), job_id="fresh")
    assert isinstance(await client.result("fresh", timeout_s=60), Succeeded)
    assert not (await client.submit(CaptionJob(video=job.video, srt=job.srt, cache=True,
                                               style=type(job.style)(bold=True)),
                                    job_id="bold")).cached
    assert not (await client.result("bold", timeout_s=60)).cached
    await outcomes.wait_for("bold", "succeeded")  # the agent's own word, a moment later
    assert sorted(o.job_id for o in outcomes.seen) == ["bold", "first", "fresh"]


@pytest.mark.timeout(120)
async def test_a_new_build_or_a_lost_result_runs_the_job_again(
        client: Client, nats_server: Secure, js: JetStreamContext, media_dir: Path,
        tmp_path: Path, outcomes: Outcomes) -> None:
    job = CaptionJob(video=await client.upload_input(media_dir / "talk.mp4"),
                     srt=await client.upload_input(media_dir / "talk.srt"))
    async with running_agent(agent_config(nats_server, tmp_path / "a"), outcomes):
        await client.submit(job, job_id="one")
        one = await client.result("one", timeout_s=60)
        assert isinstance(one, Succeeded)
        # The result is deleted (or expired): nothing to serve, so the job runs.
        await delete_object(js, results_bucket("default"), one.output.name)
        assert not (await client.submit(job, job_id="two")).cached
        two = await client.result("two", timeout_s=60)
        assert isinstance(two, Succeeded) and not two.cached
    # Another build: an agent whose fonts differ (captions are drawn with them).
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    shutil.copy(next(Path(find_fonts_dir("")).rglob("DejaVuSans.ttf")), fonts)
    async with running_agent(agent_config(nats_server, tmp_path / "b", fonts_dir=str(fonts)),
                             outcomes) as other:
        assert other.build != two.build
        assert not (await client.submit(job, job_id="three")).cached
        three = await client.result("three", timeout_s=60)
        assert isinstance(three, Succeeded) and three.build == other.build
        assert (await client.submit(job, job_id="four")).cached  # this build's now
        await outcomes.wait_for("three", "succeeded")
    assert sorted(o.job_id for o in outcomes.seen) == ["one", "three", "two"]


async def test_the_cache_is_per_tenant(secure: Secure, ctl: Session, media_dir: Path,
                                       tmp_path: Path, outcomes: Outcomes) -> None:
    async with session(secure, "client", "alice", tenant="alice") as a, \
            session(secure, "client", "bob", tenant="bob") as b:
        alice, bob = tenant_client(a, "alice"), tenant_client(b, "bob")
        jobs = {}
        for name, c in (("alice", alice), ("bob", bob)):
            jobs[name] = CaptionJob(video=await c.upload_input(media_dir / "talk.mp4", "v.mp4"),
                                    srt=await c.upload_input(media_dir / "talk.srt", "s.srt"))
        async with running_agent(agent_config(secure, tmp_path / "a"), outcomes):
            await alice.submit(jobs["alice"], job_id="j1")
            assert isinstance(await alice.result("j1", timeout_s=60), Succeeded)
            assert (await alice.submit(jobs["alice"], job_id="j2")).cached
            # Bob's identical job is his own: it runs, and what it reads is his.
            assert not (await bob.submit(jobs["bob"], job_id="j1")).cached
            done = await bob.result("j1", timeout_s=60)
            assert isinstance(done, Succeeded) and done.output.bucket == "results-bob"
        assert await _starts(ctl.nc.jetstream(), "j1", "bob") == 1
