"""The bus contract seen from outside: raw publishers, replay, idempotent submits."""

from __future__ import annotations

import base64
import hashlib
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
    # Nothing of ours on this side: a tenant's creds file, nats-py's own object store (through
    # the JetStream API the tenant's account imports) and a core publish.
    creds = nats_server.creds_file("client", "raw", tenant="default")
    nc = await nats.connect(nats_server.url, user_credentials=str(creds))
    fleet_js = nc.jetstream(prefix="$JS.FLEET.API")
    inputs = await fleet_js.object_store("inputs-default")
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
    assert result["output"]["bucket"] == "results-default"
    data = await _raw_download(nc, "results-default", result["output"]["name"])
    assert len(data) == result["output"]["size_bytes"] > 1000
    assert hashlib.sha256(data).hexdigest() == result["output"]["sha256"]
    await nc.close()


async def _raw_download(nc: nats.NATS, bucket: str, name: str) -> bytes:
    """docs/protocol.md's download, request by request (a stock object-store get makes an
    unnamed ordered consumer, which a tenant's account does not import)."""
    api, stream = "$JS.FLEET.API", f"OBJ_{bucket}"
    meta = base64.urlsafe_b64encode(name.encode()).decode()
    got = await nc.request(f"{api}.STREAM.MSG.GET.{stream}",
                           json.dumps({"last_by_subj": f"$O.{bucket}.M.{meta}"}).encode())
    info = json.loads(base64.b64decode(json.loads(got.data)["message"]["data"]))
    chunks = f"$O.{bucket}.C.{info['nuid']}"
    config = {"name": "d1", "filter_subject": chunks, "deliver_policy": "all",
              "ack_policy": "none", "mem_storage": True, "num_replicas": 1,
              "inactive_threshold": 30_000_000_000}
    created = await nc.request(f"{api}.CONSUMER.CREATE.{stream}.d1.{chunks}",
                               json.dumps({"stream_name": stream, "config": config}).encode())
    assert "error" not in json.loads(created.data), created.data
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(f"{api}.CONSUMER.MSG.NEXT.{stream}.d1",
                     json.dumps({"batch": info["chunks"], "expires": 5_000_000_000}).encode(),
                     reply=inbox)
    data = b"".join([(await sub.next_msg(timeout=5)).data for _ in range(info["chunks"])])
    await nc.request(f"{api}.CONSUMER.DELETE.{stream}.d1", b"")
    return data


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
