"""The bus contract seen from outside: raw publishers, replay, idempotent submits."""

from __future__ import annotations

import json
from pathlib import Path

import nats

from broker.events import Failed, Progress, Queued, Started, Succeeded
from broker.jobs import CaptionJob
from broker.subjects import EVENTS_STREAM, JOBS_STREAM


async def _count(js, job_id: str, kind: str) -> int:
    info = await js.stream_info(EVENTS_STREAM, subjects_filter=f"events.default.{job_id}.{kind}.*")
    return sum((info.state.subjects or {}).values())


async def test_raw_json_job_from_plain_nats_client(js, control, agent, nats_server, media_dir: Path,
                                                    tmp_path: Path) -> None:
    # Nothing of ours on this side: nats-py's own object store and a core publish.
    nc = await nats.connect(nats_server.url)
    inputs = await nc.jetstream().object_store("inputs-default")
    await inputs.put("raw/talk.mp4", (media_dir / "talk.mp4").read_bytes())
    await inputs.put("raw/talk.srt", (media_dir / "talk.srt").read_bytes())
    events = await nc.subscribe("events.default.rawjob1.>")
    body = json.dumps({"video": "obj:raw/talk.mp4", "srt": "obj:raw/talk.srt"}).encode()
    await nc.publish("submit.default.caption.rawjob1", body)  # no reply wanted

    seen = []
    while not seen or seen[-1].split(".")[3] not in ("succeeded", "failed"):
        msg = await events.next_msg(timeout=60)
        seen.append(msg.subject)
        last = msg
    assert seen[-1] == f"events.default.rawjob1.succeeded.{agent.agent_id}"
    result = json.loads(last.data)
    assert result["kind"] == "succeeded" and result["encoder"] == "libx264"
    results = await nc.jetstream().object_store("results-default")
    out = await results.get(result["output"]["name"])
    assert len(out.data) == result["output"]["size_bytes"] > 1000
    await nc.close()


async def test_late_watch_replays_every_event_in_order(client, agent, media_dir: Path) -> None:
    job = CaptionJob(video=await client.upload_input(media_dir / "talk.mp4"),
                     srt=await client.upload_input(media_dir / "talk.srt"))
    receipt = await client.submit(job)
    live = [e async for e in client.watch(receipt.job_id, timeout_s=60)]
    assert isinstance(live[-1], Succeeded)

    late = [e async for e in client.watch(receipt.job_id, timeout_s=10)]
    assert late == live
    assert [type(e) for e in late[:2]] == [Queued, Started]
    assert any(isinstance(e, Progress) for e in late)
    assert await client.result(receipt.job_id) == live[-1]


async def test_resubmitting_a_job_id_runs_it_once(client, agent, outcomes, js,
                                                  media_dir: Path) -> None:
    job = CaptionJob(video=await client.upload_input(media_dir / "talk.mp4"),
                     srt=await client.upload_input(media_dir / "talk.srt"))
    first = await client.submit(job, job_id="same-id")
    again = await client.submit(job, job_id="same-id")
    assert not first.duplicate and again.duplicate
    done = await client.result("same-id", timeout_s=60)
    assert isinstance(done, Succeeded)
    assert (await client.submit(job, job_id="same-id")).duplicate  # inside the dedupe window

    # Past the dedupe window (simulated by a publish without Nats-Msg-Id), the dispatcher
    # sees the job state and acks it without handing it out. Jobs leave the queue in order,
    # so once a job queued after it has run, it has been dealt with.
    await outcomes.wait_for("same-id", "succeeded")
    await js.publish("jobs.default.caption.same-id", b'{"video": "obj:x", "srt": "obj:y"}')
    after = await client.submit(job, job_id="after")
    assert isinstance(await client.result(after.job_id, timeout_s=60), Succeeded)
    assert await _count(js, "same-id", "started") == 1
    assert await _count(js, "same-id", "succeeded") == 1
    assert await client.result("same-id") == done
    info = await js.stream_info(JOBS_STREAM, subjects_filter="jobs.>")
    assert not info.state.subjects  # acked, not left in the queue


async def test_watch_a_failed_job_ends_with_failed(client, agent, js) -> None:
    receipt = await client.submit(CaptionJob(video="obj:missing.mp4", srt="obj:missing.srt"))
    events = [e async for e in client.watch(receipt.job_id, timeout_s=30)]
    assert isinstance(events[-1], Failed)
    assert "no object 'missing" in events[-1].error.message
    assert await _count(js, receipt.job_id, "failed") == 1
