"""An agent can harm only the job it was given: each claim of controller/dispatcher.py as the
attack that fails, on a real operator-mode server with agents' scoped credentials.

These speak the dispatch protocol directly (gpu_agent/dispatch_link.py), as a stolen agent
credential would; the end-to-end runs of a real agent are in test_auth.py and elsewhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path

import msgspec
import nats.errors
import pytest
from nats.aio.msg import Msg

from broker.dispatch import (
    MAX_CHUNK_BYTES,
    Grant,
    Hold,
    Release,
    ReportReply,
    WorkRequest,
    decode_report,
    decode_report_reply,
)
from broker.events import (
    Failed,
    JobError,
    OutputInfo,
    Progress,
    Retrying,
    Started,
    Succeeded,
    Timings,
    decode_event,
)
from broker.heartbeats import Heartbeat, encode_heartbeat
from broker.jobs import CaptionJob
from broker.jobstate import JobStates
from broker.objects import ObjectMissing
from broker.subjects import (
    EVENTS_STREAM,
    FLEET_API_PREFIX,
    JOBS_CONSUMER,
    JOBS_STREAM,
    JOBSTATE_BUCKET,
    inputs_bucket,
    results_bucket,
)
from client.api import Client
from controller.dispatcher import Dispatcher
from controller.observe import HeartbeatBook
from controller.waiters import Waiters
from gpu_agent.dispatch_link import DispatchLink, LeaseLost
from gpu_agent.ffmpeg import ProgressUpdate
from gpu_agent.progress import ProgressReporter
from tests.secure_stack import Secure, Session, session, tenant_client

_JOB = CaptionJob(video="obj:v.mp4", srt="obj:s.srt")


@pytest.fixture
async def alice(secure: Secure) -> Client:  # type: ignore[misc]
    async with session(secure, "client", "alice", tenant="alice") as s:
        yield tenant_client(s, "alice")


@pytest.fixture
async def agent_a(secure: Secure):  # type: ignore[no-untyped-def]
    async with session(secure, "agent", "vf-a") as s:
        yield s


@pytest.fixture
async def agent_b(secure: Secure):  # type: ignore[no-untyped-def]
    async with session(secure, "agent", "vf-b") as s:
        yield s


def _link(s: Session) -> DispatchLink:
    return DispatchLink(s.nc, s.minted.name, timeout_s=5)


async def _grant(s: Session, wait_s: float = 10) -> Grant:
    grant = await _link(s).next_job(wait_s)
    assert grant is not None, f"no job for {s.minted.name} within {wait_s} s"
    return grant


def _succeeded(grant: Grant, *, name: str, size: int, sha256: str, job_id: str = "",
               agent_id: str = "vf-a", attempt: int | None = None) -> Succeeded:
    return Succeeded(
        job_id=job_id or grant.job_id, tenant=grant.tenant, at=time.time(), operation="caption",
        agent_id=agent_id, attempt=grant.attempt if attempt is None else attempt,
        encoder="libx264",
        output=OutputInfo(bucket="anything", name=name, size_bytes=size, sha256=sha256,
                          duration_s=1.0, width=320, height=240, video_codec="h264",
                          container="mp4"),
        timings=Timings(queue_wait_s=0, fetch_s=0, validate_s=0, encode_s=1, upload_s=0,
                        total_s=1))


async def _events(ctl: Session, job_id: str) -> list[str]:
    js = ctl.nc.jetstream()
    info = await js.stream_info(EVENTS_STREAM, subjects_filter=f"events.alice.{job_id}.>")
    return sorted(info.state.subjects or {})


async def test_an_agent_cannot_report_or_upload_for_a_job_it_does_not_hold(
        secure: Secure, alice: Client, agent_a: Session, agent_b: Session,
        ctl: Session, tmp_path: Path) -> None:
    await alice.submit(_JOB, job_id="j1")
    await alice.submit(_JOB, job_id="j2")
    mine, theirs = await _grant(agent_a), await _grant(agent_b)
    link = _link(agent_a)
    forged = [Hold(job_id=theirs.job_id, tenant="alice"),
              Release(job_id=theirs.job_id, tenant="alice"),
              Started(job_id=theirs.job_id, tenant="alice", at=1.0, operation="caption",
                      agent_id="vf-b", attempt=1, encoder="libx264"),
              Failed(job_id=theirs.job_id, tenant="alice", at=1.0, agent_id="vf-b",
                     attempt=1, error=JobError(code="invalid_input", message="forged")),
              _succeeded(theirs, name=f"{theirs.job_id}/1/out.mp4", size=3,
                         sha256=hashlib.sha256(b"bad").hexdigest(), agent_id="vf-b")]
    for report in forged:
        reply = await link.report(report)
        assert (reply.ok, reply.code) == (False, "not_holder"), report
    other = tmp_path / "evil.mp4"
    other.write_bytes(b"bad")
    with pytest.raises(LeaseLost):
        await link.upload(other, tenant="alice", job_id=theirs.job_id,
                          name=f"{theirs.job_id}/1/out.mp4")
    states = JobStates(await ctl.nc.jetstream().key_value(JOBSTATE_BUCKET))
    assert await states.get("alice", theirs.job_id) is None  # nothing recorded for it
    assert await _events(ctl, theirs.job_id) == [f"events.alice.{theirs.job_id}.queued.queue"]
    # Nor can it go around the dispatcher: no stream, KV or ack subject is within reach.
    js = agent_a.nc.jetstream(prefix=FLEET_API_PREFIX)
    for subject in (f"events.alice.{theirs.job_id}.succeeded.vf-a",
                    f"$KV.{JOBSTATE_BUCKET}.alice.{theirs.job_id}",
                    f"$JS.ACK.{JOBS_STREAM}.{JOBS_CONSUMER}.1.2.2.0.0.0.0"):
        await agent_a.denied(subject, lambda s=subject: agent_a.nc.publish(s, b"+ACK"))
    psub = await js.pull_subscribe_bind(JOBS_CONSUMER, JOBS_STREAM)
    with pytest.raises((TimeoutError, nats.errors.Error)):  # no import leads to JOBS
        await psub.fetch(1, timeout=1)
    await agent_a.denied("fleet.report.vf-b", lambda: agent_a.nc.request(
        "fleet.report.vf-b", b"{}", timeout=1))
    assert mine.job_id != theirs.job_id


async def test_an_agent_holds_one_job_and_asking_for_more_hands_the_first_back(
        secure: Secure, alice: Client, agent_a: Session, agent_b: Session,
        ctl: Session) -> None:
    for n in range(3):
        await alice.submit(_JOB, job_id=f"j{n}")
    first = await _grant(agent_a)
    again = await _grant(agent_a)  # the first went back at once, and came round again
    assert (again.job_id, again.attempt) == (first.job_id, first.attempt + 1)
    assert secure.control is not None
    assert secure.control.dispatcher.holds("vf-a") == [first.job_id]
    other = await _grant(agent_b)
    assert other.job_id != first.job_id
    info = await ctl.nc.jetstream().consumer_info(JOBS_STREAM, JOBS_CONSUMER)
    assert info.num_ack_pending == 2  # one delivery per agent, whatever they asked for


async def test_a_report_speaks_for_the_lease_not_for_what_its_body_claims(
        secure: Secure, alice: Client, agent_a: Session, ctl: Session) -> None:
    await alice.submit(_JOB, job_id="j1")
    grant = await _grant(agent_a)
    reply = await _link(agent_a).report(Started(
        job_id="j1", tenant="alice", at=1.0, operation="img2vid", agent_id="vf-b",
        attempt=7, encoder="libx264"))
    assert reply.ok
    stored = await ctl.nc.jetstream().get_last_msg(EVENTS_STREAM, "events.alice.j1.started.*")
    event = decode_event(stored.data)
    assert stored.subject == "events.alice.j1.started.vf-a"
    assert isinstance(event, Started)
    assert (event.agent_id, event.attempt, event.operation) == ("vf-a", grant.attempt,
                                                                "caption")


async def test_a_result_counts_only_as_the_bytes_the_dispatcher_stored(
        secure: Secure, alice: Client, agent_a: Session, ctl: Session,
        tmp_path: Path) -> None:
    await alice.submit(_JOB, job_id="j1")
    grant = await _grant(agent_a)
    link = _link(agent_a)
    result = tmp_path / "out.mp4"
    result.write_bytes(b"the real result" * 1000)
    real_sha = hashlib.sha256(result.read_bytes()).hexdigest()
    with pytest.raises(OSError, match="named j1/1/<file>"):  # not another job's name
        await link.upload(result, tenant="alice", job_id="j1", name="j2/1/out.mp4")
    size, sha = await link.upload(result, tenant="alice", job_id="j1", name="j1/1/out.mp4")
    assert (size, sha) == (result.stat().st_size, real_sha)
    lie = await link.report(_succeeded(grant, name="j1/1/out.mp4", size=size,
                                       sha256=hashlib.sha256(b"other").hexdigest()))
    assert (lie.ok, lie.code) == (False, "upload_mismatch")
    states = JobStates(await ctl.nc.jetstream().key_value(JOBSTATE_BUCKET))
    assert await states.terminal("alice", "j1") is None
    # Sent again and described truly, it counts, as measured by the dispatcher.
    await link.upload(result, tenant="alice", job_id="j1", name="j1/1/out.mp4")
    ok = await link.report(_succeeded(grant, name="j1/1/out.mp4", size=size, sha256=real_sha))
    assert ok.ok
    outcome = await states.terminal("alice", "j1")
    assert isinstance(outcome, Succeeded)
    assert (outcome.output.bucket, outcome.output.sha256, outcome.output.size_bytes) == (
        results_bucket("alice"), real_sha, size)
    saved = await alice.download(outcome.output, tmp_path / "saved.mp4")
    assert saved.read_bytes() == result.read_bytes()
    info = await ctl.nc.jetstream().consumer_info(JOBS_STREAM, JOBS_CONSUMER)
    assert (info.num_ack_pending, info.num_pending) == (0, 0)  # acked with its outcome


async def test_a_silent_holder_loses_its_job_to_another_agent_within_ack_wait(
        secure: Secure, alice: Client, agent_a: Session, agent_b: Session) -> None:
    await alice.submit(_JOB, job_id="j1")
    grant = await _grant(agent_a)
    # vf-a says nothing more (its host froze, or it acks nothing on purpose).
    again = await _grant(agent_b, wait_s=3 * 3.0 + 5)  # TEST_TOPOLOGY.ack_wait_s is 3 s
    assert (again.job_id, again.attempt) == (grant.job_id, grant.attempt + 1)
    reply = await _link(agent_a).report(Hold(job_id="j1", tenant="alice"))
    assert reply.code == "not_holder"


async def test_a_job_in_hand_survives_a_dispatcher_restart(
        secure: Secure, alice: Client, agent_a: Session, ctl: Session,
        tmp_path: Path) -> None:
    await alice.submit(_JOB, job_id="j1")
    grant = await _grant(agent_a)
    assert secure.control is not None
    await secure.control.dispatcher.stop()
    fresh = Dispatcher(ctl.nc.jetstream())
    await fresh.start(ctl.nc)
    try:
        assert fresh.holds("vf-a") == ["j1"]  # from the leases bucket
        link = _link(agent_a)
        assert (await link.report(Hold(job_id="j1", tenant="alice"))).ok
        result = tmp_path / "out.mp4"
        result.write_bytes(b"done")
        size, sha = await link.upload(result, tenant="alice", job_id="j1",
                                      name="j1/1/out.mp4")
        assert (await link.report(_succeeded(grant, name="j1/1/out.mp4", size=size,
                                              sha256=sha))).ok
        assert fresh.holds("vf-a") == []
    finally:
        await fresh.stop()
    info = await ctl.nc.jetstream().consumer_info(JOBS_STREAM, JOBS_CONSUMER)
    assert (info.num_ack_pending, info.num_redelivered) == (0, 0)  # never ran twice


async def test_a_machine_that_claims_a_job_it_does_not_hold_is_found_out(
        secure: Secure, alice: Client, agent_a: Session, ctl: Session) -> None:
    """Busy is what the dispatcher knows, not what a heartbeat says: a liar reads as idle,
    and one that keeps it up is named for destruction (the controller's test follows it
    through to the provider)."""
    assert secure.control is not None
    beats = HeartbeatBook(time.time, holds=secure.control.dispatcher.holds)
    taken: asyncio.Queue[float] = asyncio.Queue()

    async def on_beat(msg: Msg) -> None:
        await beats.on_beat(msg)
        await taken.put(beats.seen["vf-a"].beat.at)

    watch = await ctl.nc.subscribe("agents.vf-a.heartbeat", cb=on_beat)

    async def beat(job_id: str) -> Heartbeat:
        at = time.time()
        await agent_a.nc.publish("agents.vf-a.heartbeat", encode_heartbeat(Heartbeat(
            agent_id="vf-a", state="busy", at=at, encoder="libx264", job_id=job_id)))
        while await asyncio.wait_for(taken.get(), 5) != at:
            pass
        return beats.seen["vf-a"].beat

    try:
        await alice.submit(_JOB, job_id="j1")
        await _grant(agent_a)
        assert (await beat("j1")).job_id == "j1"
        for _ in range(2):
            seen = await beat("someone-elses")
            assert (seen.state, seen.job_id) == ("busy", "j1")  # the truth, not the claim
        assert "vf-a" not in beats.liars  # two lies so far: could be a race
        await _link(agent_a).report(Release(job_id="j1", tenant="alice"))
        seen = await beat("j1")
        assert (seen.state, seen.job_id) == ("idle", None)
        assert beats.liars == {"vf-a"}
    finally:
        await watch.unsubscribe()


def test_reports_decode_only_what_the_protocol_names() -> None:
    from broker.dispatch import decode_report
    with pytest.raises(msgspec.ValidationError):
        decode_report(b'{"kind": "queued", "job_id": "j1", "at": 1}')


async def test_a_holder_cannot_flood_the_events_of_its_own_job(
        secure: Secure, alice: Client, agent_a: Session, ctl: Session) -> None:
    """Events keep a bounded number of bytes, the oldest going first: a flood would push
    other jobs' history out. A holder gets one started event and a bounded progress rate."""
    await alice.submit(_JOB, job_id="j1")
    grant = await _grant(agent_a)
    link = _link(agent_a)
    started = Started(job_id="j1", tenant="alice", at=1.0, operation="caption",
                      agent_id="vf-a", attempt=grant.attempt, encoder="libx264")
    assert (await link.report(started)).ok
    assert (await link.report(started)).code == "invalid"
    began = time.monotonic()
    for n in range(100):
        assert (await link.report(Progress(job_id="j1", tenant="alice", at=1.0,
                                           agent_id="vf-a", attempt=grant.attempt,
                                           percent=n / 2, media_time_s=n))).ok
    elapsed = time.monotonic() - began
    counts = (await ctl.nc.jetstream().stream_info(
        EVENTS_STREAM, subjects_filter="events.alice.j1.>")).state.subjects or {}
    assert counts["events.alice.j1.started.vf-a"] == 1
    assert counts["events.alice.j1.progress.vf-a"] <= 1 + elapsed / 0.1


async def test_an_agent_reads_only_the_inputs_of_the_job_it_holds(
        secure: Secure, alice: Client, agent_a: Session, media_dir: Path,
        tmp_path: Path) -> None:
    video = await alice.upload_input(media_dir / "talk.mp4", name="v.mp4")
    srt = await alice.upload_input(media_dir / "talk.srt", name="s.srt")
    await alice.upload_input(media_dir / "talk.srt", name="private.srt")  # named by no job
    await alice.submit(CaptionJob(video=video, srt=srt), job_id="j1")
    await _grant(agent_a)
    link = _link(agent_a)
    size = await link.fetch_input(tmp_path / "v", tenant="alice", job_id="j1", name="v.mp4")
    assert (tmp_path / "v").read_bytes() == (media_dir / "talk.mp4").read_bytes()
    assert size == (media_dir / "talk.mp4").stat().st_size
    with pytest.raises(ObjectMissing, match=r"does not name obj:private\.srt"):
        await link.fetch_input(tmp_path / "p", tenant="alice", job_id="j1",
                               name="private.srt")
    with pytest.raises(LeaseLost):  # a job it does not hold
        await link.fetch_input(tmp_path / "p", tenant="alice", job_id="j2", name="v.mp4")
    assert not (tmp_path / "p").exists()
    # And no JetStream route around the dispatcher: the agent's account imports none.
    js = agent_a.nc.jetstream(prefix=FLEET_API_PREFIX)
    with pytest.raises((nats.errors.Error, TimeoutError)):
        await asyncio.wait_for(js.object_store(inputs_bucket("alice")), 3)
    await agent_a.denied(f"{FLEET_API_PREFIX}.STREAM.INFO.OBJ_{inputs_bucket('alice')}",
                         lambda: js.stream_info(f"OBJ_{inputs_bucket('alice')}"))


async def test_an_outcome_claimed_but_never_announced_reaches_the_client(
        alice: Client, agent_a: Session, ctl: Session) -> None:
    """Whoever ended the job died between claiming its outcome and publishing it: the next
    holder's ``started`` finds the job ended, and the dispatcher (FLEET, not the agent, which
    may publish no event) announces the outcome, so the client still gets it."""
    await alice.submit(_JOB, job_id="j1")
    grant = await _grant(agent_a)
    states = JobStates(await ctl.nc.jetstream().key_value(JOBSTATE_BUCKET))
    orphan = Failed(job_id="j1", tenant="alice", at=1.0, agent_id="vf-gone", attempt=1,
                    error=JobError(code="invalid_input", message="video: not a video"))
    assert await states.claim_terminal(orphan) is None  # claimed; its publisher then died
    assert await _events(ctl, "j1") == ["events.alice.j1.queued.queue"]  # no outcome yet
    reply = await _link(agent_a).report(Started(
        job_id="j1", tenant="alice", at=2.0, operation="caption", agent_id="vf-a",
        attempt=grant.attempt, encoder="libx264"))
    assert (reply.ok, reply.code) == (False, "already_ended")
    assert await alice.result("j1", timeout_s=10) == orphan
    info = await ctl.nc.jetstream().consumer_info(JOBS_STREAM, JOBS_CONSUMER)
    assert info.num_ack_pending == 0  # acked: it will not run again


async def test_a_job_the_gateway_would_refuse_is_dropped_and_the_queue_goes_on(
        alice: Client, agent_a: Session, ctl: Session) -> None:
    """Only FLEET writes JOBS (through the gateway, which checks ids where they enter); a job
    written past it with an id outside the rules is dropped, loudly, and the next one runs."""
    js = ctl.nc.jetstream()
    for job_id in ("caf\u00e9", "x$y", "x" * 65):
        await js.publish(f"jobs.alice.caption.{job_id}", msgspec.json.encode(_JOB))
    await alice.submit(_JOB, job_id="good")
    assert (await _grant(agent_a)).job_id == "good"
    info = await js.consumer_info(JOBS_STREAM, JOBS_CONSUMER)
    assert (info.num_pending, info.num_ack_pending) == (0, 1)  # the three were dropped


async def test_an_outcome_carries_the_machine_time_of_every_attempt(
        secure: Secure, alice: Client, agent_a: Session, agent_b: Session,
        ctl: Session) -> None:
    """Attempt 1 runs 10 s on a $3.60/h machine and hands the job back for a retry; attempt 2
    runs 10 s on a $7.20/h one and fails: the job cost $0.01 + $0.02, not the last $0.02. The
    prices are the controller's records; what the agents claim ($999/h) counts for nothing."""
    now = [1000.0]
    assert secure.control is not None
    await secure.control.dispatcher.stop()
    rented = {"vf-a": 3.6, "vf-b": 7.2}
    dispatcher = Dispatcher(ctl.nc.jetstream(), clock=lambda: now[0], price_of=rented.get)
    await dispatcher.start(ctl.nc)
    try:
        await alice.submit(_JOB, job_id="j1")
        a = DispatchLink(agent_a.nc, "vf-a", timeout_s=5, price_per_hour=999.0)
        first = await a.next_job(10)
        assert first is not None and first.attempt == 1
        now[0] = 1010.0
        assert (await a.report(Retrying(
            job_id="j1", tenant="alice", at=now[0], agent_id="vf-a", attempt=1,
            error=JobError(code="input_unavailable", message="HTTP 503"), retry_in_s=0,
            failures=1))).ok
        now[0] = 1020.0
        b = DispatchLink(agent_b.nc, "vf-b", timeout_s=5, price_per_hour=999.0)
        second = await b.next_job(10)
        assert second is not None and second.attempt == 2
        now[0] = 1030.0
        assert (await b.report(Failed(
            job_id="j1", tenant="alice", at=now[0], agent_id="vf-b", attempt=2,
            error=JobError(code="invalid_input", message="not a video")))).ok
        failed = await alice.result("j1", timeout_s=10)
    finally:
        await dispatcher.stop()
    assert isinstance(failed, Failed)
    assert failed.price_per_hour == 7.2
    assert failed.cost_usd == pytest.approx(0.01 + 0.02, abs=1e-5)


async def test_the_fleets_attribution_is_exactly_what_the_jobs_were_charged(
        secure: Secure, alice: Client, agent_a: Session, ctl: Session) -> None:
    """A lease ends once, at one moment, for both books: the job's cost_usd and the share of
    the bill attributed to jobs. A slow controller (here a monotonic clock that moves 10 ms
    every time it is read) once ended the lease at its holder's last word in one and at the
    outcome's pricing in the other, and a full run saw $0.000011 between them."""
    now, mono = [1000.0], [0.0]

    def ticking() -> float:
        mono[0] += 0.01
        return mono[0]

    assert secure.control is not None
    await secure.control.dispatcher.stop()
    dispatcher = Dispatcher(ctl.nc.jetstream(), clock=lambda: now[0], monotonic=ticking,
                            price_of={"vf-a": 7.2}.get)
    await dispatcher.start(ctl.nc)
    try:
        for job_id in ("j1", "j2"):
            await alice.submit(_JOB, job_id=job_id)
        a = DispatchLink(agent_a.nc, "vf-a", timeout_s=5)
        outcomes = []
        for job_id in ("j1", "j2"):  # one fails, the other is cancelled while it runs
            grant = await a.next_job(10)
            assert grant is not None and grant.job_id == job_id
            now[0] += 10.0
            if job_id == "j1":
                assert (await a.report(Failed(
                    job_id="j1", tenant="alice", at=now[0], agent_id="vf-a", attempt=1,
                    error=JobError(code="invalid_input", message="not a video")))).ok
            else:
                assert (await alice.cancel("j2")).ok
            outcomes.append(await alice.result(job_id, timeout_s=10))
        attributed, _ = dispatcher.attributed()
    finally:
        await dispatcher.stop()
    assert [o.cost_usd for o in outcomes] == [pytest.approx(0.02, abs=1e-4)] * 2
    assert attributed == pytest.approx(sum(o.cost_usd for o in outcomes), abs=1e-9)


async def test_an_attempt_number_is_never_used_twice(alice: Client, agent_a: Session,
                                                     ctl: Session) -> None:
    # A broker restart can make the consumer forget a delivery: the job then comes back with
    # a delivery count it had before. Here the job state says attempt 3 started already.
    await alice.submit(_JOB, job_id="j1")
    states = JobStates(await ctl.nc.jetstream().key_value(JOBSTATE_BUCKET))
    await states.record_started(Started(job_id="j1", tenant="alice", at=time.time(),
                                        operation="caption", agent_id="vf-old", attempt=3,
                                        encoder="libx264"))
    grant = await _grant(agent_a)
    assert (grant.job_id, grant.attempt) == ("j1", 4)  # not 1 again: results are <job>/<n>/
    assert grant.max_deliver == 4 + 4 - 1  # the server's deliveries left, counted from here


async def test_a_stopping_controller_leases_nothing_more(secure: Secure, alice: Client,
                                                         agent_a: Session) -> None:
    # Stopping, the controller still ends its tick and tells its agents to stop after: a
    # job leased meanwhile would be taken by an agent about to leave.
    assert secure.control is not None
    secure.control.dispatcher.stop_granting()
    await alice.submit(_JOB, job_id="j1")
    assert await _link(agent_a).next_job(1.0) is None
    assert (await alice.status("j1")).state == "queued"


async def test_an_agent_holds_one_job_per_slot_and_no_more_slots_than_allowed(
        secure: Secure, alice: Client, agent_a: Session, ctl: Session) -> None:
    """Several jobs per GPU: an agent running two slots holds a job in each, reports on both,
    and a request on one slot hands back that slot's job alone. Each pays half the machine.
    A stolen credential gets no more: past the cap (2 here) a slot is refused whatever the
    agent declares, and it cannot change its count to price a job at the whole machine."""
    assert secure.control is not None
    await secure.control.dispatcher.stop()
    dispatcher = Dispatcher(ctl.nc.jetstream(), price_of={"vf-a": 0.8}.get, max_slots=2)
    await dispatcher.start(ctl.nc)
    try:
        for n in range(4):
            await alice.submit(_JOB, job_id=f"j{n}")
        greedy = DispatchLink(agent_a.nc, "vf-a", timeout_s=5, slots=8)  # capped at 2
        with pytest.raises(RuntimeError, match="slot 2 of 8: this agent runs 2 slot"):
            await greedy.next_job(1, slot=2)
        one = await greedy.next_job(10, slot=0)
        two = await greedy.next_job(10, slot=1)
        assert one is not None and two is not None and one.job_id != two.job_id
        assert sorted(dispatcher.holds("vf-a")) == sorted([one.job_id, two.job_id])
        for grant in (one, two):  # each slot's job is its own to report on
            assert (await greedy.report(Hold(job_id=grant.job_id, tenant="alice"))).ok
        whole = DispatchLink(agent_a.nc, "vf-a", timeout_s=5, slots=1)
        with pytest.raises(RuntimeError, match="this agent runs 2 slot"):
            await whole.next_job(1, slot=0)
        assert sorted(dispatcher.holds("vf-a")) == sorted([one.job_id, two.job_id])
        again = await greedy.next_job(10, slot=1)  # slot 1's job goes back, slot 0's stays
        assert again is not None  # (back at the head of the queue, it came round again)
        assert (again.job_id, again.attempt) == (two.job_id, two.attempt + 1)
        assert sorted(dispatcher.holds("vf-a")) == sorted([one.job_id, two.job_id])
        info = await ctl.nc.jetstream().consumer_info(JOBS_STREAM, JOBS_CONSUMER)
        assert info.num_ack_pending == 2  # one delivery per slot
        _, per_hour = dispatcher.attributed()
        assert per_hour == pytest.approx(0.8)  # two leases at half the machine's price each
    finally:
        await dispatcher.stop()


async def test_an_agent_runs_one_slot_unless_the_controller_allows_more(
        secure: Secure, alice: Client, agent_a: Session) -> None:
    await alice.submit(_JOB, job_id="j1")
    link = DispatchLink(agent_a.nc, "vf-a", timeout_s=5, slots=4)
    with pytest.raises(RuntimeError, match="slot 1 of 4: this agent runs 1 slot"):
        await link.next_job(1, slot=1)
    assert (await link.next_job(10, slot=0)) is not None


async def test_a_progress_report_nobody_answers_does_not_hold_up_the_job(
        secure: Secure, agent_a: Session, ctl: Session) -> None:
    """Found by a slow run of test_controller.py: a controller SIGKILLed while a progress
    report was on its way left the report unanswered, and the job's end waited out the
    request timeout after FFmpeg had finished. Progress goes in the background now, one at
    a time, and is dropped when the job's outcome is due."""
    assert secure.control is not None
    await secure.control.dispatcher.stop()  # a dead dispatcher: it hears, and never answers
    heard = await ctl.nc.subscribe("fleet.report.vf-a")
    await ctl.nc.flush()
    reporter = ProgressReporter(link=DispatchLink(agent_a.nc, "vf-a", timeout_s=30),
                                tenant="alice", job_id="j1", attempt=1, agent_id="vf-a",
                                clock=time.time, min_interval_s=0.0)
    reporter.expected_duration_s = 10.0
    await reporter(ProgressUpdate(media_time_s=2.0, speed=1.0, done=False))  # returns at once
    report = await heard.next_msg(timeout=5)  # ... while its report waits for an answer
    assert decode_report(report.data).percent == 20.0  # type: ignore[union-attr]
    await reporter(ProgressUpdate(media_time_s=4.0, speed=1.0, done=False))  # dropped: one
    await reporter.close()                                         # is still on its way
    with pytest.raises(nats.errors.TimeoutError):
        await heard.next_msg(timeout=0.5)
    assert reporter.published == 0


async def test_a_slot_count_is_forgotten_only_when_its_agent_holds_and_asks_nothing() -> None:
    """Machines come and go all day, so the counts cannot be kept for ever; but while an
    agent holds a job or waits for one its count stays fixed, so no two of its jobs are
    priced at different shares."""
    waiters = Waiters(lambda: 0.0, max_slots=4)
    assert waiters.refusal("vf-a", WorkRequest(slot=1, slots=2)) == ""
    assert waiters.refusal("vf-a", WorkRequest(slot=0, slots=1))  # fixed at 2
    await waiters.expire(holding=frozenset({"vf-a"}))  # a lease in hand: kept
    assert waiters.refusal("vf-a", WorkRequest(slot=0, slots=1))
    waiters.add(Msg(_client=None, subject="fleet.work.vf-a", reply="r"),  # type: ignore[arg-type]
                "vf-a", 0, 10.0, 0.4)
    await waiters.expire(holding=frozenset())  # a request open: kept
    assert waiters.refusal("vf-a", WorkRequest(slot=0, slots=1))
    assert waiters.next() is not None  # granted: nothing open, nothing held now
    await waiters.expire(holding=frozenset())
    assert waiters.refusal("vf-a", WorkRequest(slot=0, slots=1)) == ""  # declared afresh
    assert waiters.slots("vf-a") == 1


async def test_an_agent_that_floods_the_dispatcher_is_refused_and_named(
        secure: Secure, alice: Client, agent_a: Session, agent_b: Session,
        tmp_path: Path) -> None:
    """A stolen agent credential that sends without waiting for answers would pile its
    messages up in the controller's memory until it is killed. Past 80 waiting per slot,
    each is answered "unavailable" at once; refused ten times that within 10 s, the agent is
    named for the controller to destroy its machine (test_controller.py). A burst past the
    bound alone is not enough (a slow dispatcher makes honest agents' requests wait too).
    Our own agent's windows stay under it, and other agents are served as before."""
    dispatcher = secure.control.dispatcher
    await alice.submit(_JOB, job_id="j1")
    grant = await _grant(agent_a)
    result = tmp_path / "out.mp4"  # 40 chunks: a full window of 32 in flight
    result.write_bytes(os.urandom(40 * MAX_CHUNK_BYTES))
    await _link(agent_a).upload(result, tenant="alice", job_id="j1",
                                name=f"j1/{grant.attempt}/out.mp4")
    assert dispatcher.flooders == set()

    answers: list[ReportReply] = []
    expected, all_in = 0, asyncio.Event()

    async def on_answer(msg: Msg) -> None:
        answers.append(decode_report_reply(msg.data))
        if len(answers) == expected:
            all_in.set()

    inbox = agent_a.nc.new_inbox()
    sub = await agent_a.nc.subscribe(inbox, cb=on_answer)

    async def burst(n: int) -> list[ReportReply]:
        nonlocal expected
        answers.clear()
        all_in.clear()
        expected = n
        for _ in range(n):  # tiny messages: a read on the dispatcher's side takes many at once
            await agent_a.nc.publish("fleet.report.vf-a", b"{}", reply=inbox)
        await agent_a.nc.flush()
        await asyncio.wait_for(all_in.wait(), 30)
        busy = [a for a in answers if a.message.startswith("too many requests at once")]
        assert {a.code for a in busy} <= {"unavailable"}
        assert {a.code for a in answers if a not in busy} == {"invalid"}  # the rest were read
        return busy

    assert await burst(200)  # past the bound: refused, but not condemned
    assert dispatcher.flooders == set()
    assert len(await burst(3000)) >= 800
    assert dispatcher.flooders == {"vf-a"}
    await sub.unsubscribe()
    await alice.submit(_JOB, job_id="j2")
    assert (await _grant(agent_b)).job_id == "j2"
