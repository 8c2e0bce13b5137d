"""One outcome per job, whatever happens to the machines running it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats.errors
import pytest

from broker.events import Failed, JobError, Started, Succeeded
from broker.jobs import CaptionJob
from broker.jobstate import JobStates
from broker.subjects import JOBS_CONSUMER, JOBS_STREAM, JOBSTATE_BUCKET
from broker.topology import TopologyConfig, ensure_topology
from client.api import JobNotFound, SubmitError
from controller.reaper import Reaper
from tests.conftest import TEST_TOPOLOGY


def _failed(job_id: str, agent: str) -> Failed:
    return Failed(job_id=job_id, tenant="default", at=1.0, agent_id=agent, attempt=1,
                  error=JobError(code="x", message="y"))


async def test_terminal_state_is_claimed_once(js) -> None:
    states = JobStates(await js.key_value(JOBSTATE_BUCKET))
    started = Started(job_id="j1", tenant="default", at=0.0, operation="caption",
                      agent_id="a", attempt=1, encoder="libx264")
    assert await states.record_started(started) is None
    first = _failed("j1", "a")
    assert await states.claim_terminal(first) is None  # claimed
    assert await states.claim_terminal(_failed("j1", "b")) == first  # the loser learns who won
    assert await states.record_started(started) == first  # a late start cannot reopen it
    assert await states.terminal("default", "j1") == first


async def test_concurrent_claims_have_one_winner(js) -> None:
    states = JobStates(await js.key_value(JOBSTATE_BUCKET))
    results = await asyncio.gather(*(states.claim_terminal(_failed("j2", f"a{n}"))
                                     for n in range(8)))
    assert sum(r is None for r in results) == 1
    winner = await states.terminal("default", "j2")
    assert all(r in (None, winner) for r in results)


async def test_exhausted_deliveries_end_the_job_with_a_reason(js, client) -> None:
    # Two deliveries only; the test plays two machines that each take the job and hand it
    # back (as a stopping agent does), then an idle one whose pull makes the server notice.
    await ensure_topology(js, TopologyConfig(ack_wait_s=TEST_TOPOLOGY.ack_wait_s, max_deliver=2))
    thief = await js.pull_subscribe_bind(consumer=JOBS_CONSUMER, stream=JOBS_STREAM)
    receipt = await client.submit(CaptionJob(video="obj:a", srt="obj:b"))
    for _ in range(2):
        msg = (await thief.fetch(1, timeout=10))[0]
        await msg.nak()
    with pytest.raises(nats.errors.TimeoutError):  # nothing left to deliver
        await thief.fetch(1, timeout=1)
    await thief.unsubscribe()
    stop = asyncio.Event()
    reaper = asyncio.create_task(Reaper(js, fetch_timeout_s=1.0).run(stop))
    try:
        failed = await client.result(receipt.job_id, timeout_s=30)
    finally:
        stop.set()
        await reaper
    assert isinstance(failed, Failed) and failed.error.code == "deliveries_exhausted"
    assert "delivered 2 times" in failed.error.message
    info = await js.stream_info(JOBS_STREAM)
    assert info.state.messages == 0  # not left in the queue (and the backlog)


async def test_a_full_queue_is_an_error_not_a_duplicate(js, client) -> None:
    await ensure_topology(js, TopologyConfig(max_queued_jobs=1))
    await client.submit(CaptionJob(video="obj:a", srt="obj:b"), job_id="first")
    assert (await client.submit(CaptionJob(video="obj:a", srt="obj:b"),
                                job_id="first")).duplicate
    with pytest.raises(SubmitError, match="maximum messages"):
        await client.submit(CaptionJob(video="obj:a", srt="obj:b"), job_id="second")


async def test_unknown_job_ids_are_reported(client) -> None:
    with pytest.raises(JobNotFound):
        await client.result("never-submitted", timeout_s=5)
    with pytest.raises(JobNotFound):
        async for _ in client.watch("never-submitted", timeout_s=5):
            pass


async def test_outcome_survives_in_job_state(client, agent, js, media_dir: Path) -> None:
    receipt = await client.submit(CaptionJob(
        video=await client.upload_input(media_dir / "talk.mp4"),
        srt=await client.upload_input(media_dir / "talk.srt")))
    done = await client.result(receipt.job_id, timeout_s=60)
    assert isinstance(done, Succeeded)
    states = JobStates(await js.key_value(JOBSTATE_BUCKET))
    assert await states.terminal("default", receipt.job_id) == done
