"""Every isolation claim of docs/security.md, as the attack that fails on a real operator-mode
server: tenants alice and bob, agents, and the control plane's KV buckets.

Across accounts a refused call usually has nowhere to go (no responder, a time out, or the
caller's own JetStream API saying it is off), so each test asserts both that the call fails
and that the fleet's state did not change.
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import msgspec
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from broker.auth_store import AuthRecordUnreadable, create_tenant, publish_accounts, revoke
from broker.events import OutputInfo
from broker.jobs import CaptionJob
from broker.object_writes import upload
from broker.objects import ObjectCorrupt, StoreFull, digest_hex
from broker.subjects import (
    AUTH_BUCKET,
    EVENTS_STREAM,
    FLEET_API_PREFIX,
    FLEET_BUCKET,
    JOBS_STREAM,
    JOBSTATE_BUCKET,
    inputs_bucket,
    results_bucket,
    tenant_events_stream,
)
from broker.submit import decode_submit_reply
from broker.topology import ensure_tenant
from controller.gateway import Gateway, QueueCounts
from tests.conftest import TEST_TOPOLOGY
from tests.secure_stack import Secure, Session, connect_as, session, tenant_client


async def _nothing(action) -> None:  # type: ignore[no-untyped-def]
    """The call is refused or goes nowhere."""
    with pytest.raises((nats.errors.Error, TimeoutError, nats.js.errors.Error)):
        await asyncio.wait_for(action(), 1)  # an answer here comes in milliseconds


async def _keys(js, bucket: str) -> list[str]:  # type: ignore[no-untyped-def]
    kv = await js.key_value(bucket)
    try:
        return sorted(await kv.keys())
    except nats.js.errors.NoKeysError:
        return []


@pytest.fixture
async def alice(secure: Secure):  # type: ignore[no-untyped-def]
    async with session(secure, "client", "alice", tenant="alice") as s:
        yield s


@pytest.fixture
async def bob(secure: Secure):  # type: ignore[no-untyped-def]
    async with session(secure, "client", "bob", tenant="bob") as s:
        yield s


async def test_a_tenant_cannot_read_list_or_change_anothers_objects(
        alice: Session, bob: Session, ctl: Session, media_dir: Path) -> None:
    mine = tenant_client(bob, "bob")
    ref = await mine.upload_input(media_dir / "talk.srt", name="b/talk.srt")
    assert ref == "obj:b/talk.srt"
    fleet = ctl.nc.jetstream()
    before = (await fleet.stream_info(f"OBJ_{inputs_bucket('bob')}")).state
    js = alice.nc.jetstream(prefix=FLEET_API_PREFIX)
    for bucket in (inputs_bucket("bob"), results_bucket("bob")):
        stream = f"OBJ_{bucket}"
        await _nothing(lambda b=bucket: js.object_store(b))  # list / open
        await _nothing(lambda s=stream: js.get_msg(s, seq=1))  # message get by sequence
        await _nothing(lambda s=stream, b=bucket: js.get_last_msg(s, f"$O.{b}.M.>",
                                                                  direct=True))
        await _nothing(lambda s=stream, b=bucket: js.add_consumer(s, ConsumerConfig(
            name="peek", filter_subject=f"$O.{b}.C.>", ack_policy=AckPolicy.NONE)))
        await _nothing(lambda s=stream: js.purge_stream(s))
    # Replace bob's input (a chunk plus a meta message under his name), or roll his bucket up:
    # the publishes stay in alice's own account.
    await alice.nc.publish(f"$O.{inputs_bucket('bob')}.C.evil", b"x")
    await alice.nc.publish(f"$O.{inputs_bucket('bob')}.M.Yi90YWxrLnNydA", b"{}",
                           headers={"Nats-Rollup": "all"})
    await alice.nc.flush()
    after = (await fleet.stream_info(f"OBJ_{inputs_bucket('bob')}")).state
    assert (after.messages, after.last_seq) == (before.messages, before.last_seq)
    # Her own bucket works as ever.
    await tenant_client(alice, "alice").upload_input(media_dir / "talk.srt")


async def test_a_tenant_cannot_read_or_follow_anothers_jobs_or_events(
        alice: Session, bob: Session, ctl: Session) -> None:
    receipt = await tenant_client(bob, "bob").submit(
        CaptionJob(video="https://example.com/v.mp4?sig=BOBS-SECRET", srt="obj:x.srt"),
        job_id="talk-42")
    assert receipt.stream_seq is not None
    js = alice.nc.jetstream(prefix=FLEET_API_PREFIX)
    await _nothing(lambda: js.get_msg(JOBS_STREAM, seq=receipt.stream_seq))  # bob's job body
    await _nothing(lambda: js.get_msg(EVENTS_STREAM, seq=1))
    await _nothing(lambda: js.get_last_msg(EVENTS_STREAM, "events.bob.talk-42.>", direct=True))
    await _nothing(lambda: js.add_consumer(EVENTS_STREAM, ConsumerConfig(
        name="spy", filter_subject="events.bob.>", ack_policy=AckPolicy.NONE)))
    await _nothing(lambda: js.add_consumer(EVENTS_STREAM, ConsumerConfig(
        name="spy2", filter_subject="events.>", ack_policy=AckPolicy.NONE)))
    # Bob follows his job with a consumer of an easy name on his own events stream; alice
    # guesses it: she can neither read from it nor take it over.
    bobs = bob.nc.jetstream(prefix=FLEET_API_PREFIX)
    await bobs.add_consumer(tenant_events_stream("bob"), ConsumerConfig(
        name="w1", filter_subject="events.bob.>", ack_policy=AckPolicy.NONE))
    for stream in (tenant_events_stream("bob"), tenant_events_stream("alice")):
        await _nothing(lambda s=stream: alice.nc.request(
            f"{FLEET_API_PREFIX}.CONSUMER.MSG.NEXT.{s}.w1", b'{"batch": 5}', timeout=1))
        await _nothing(lambda s=stream: js.get_last_msg(s, "events.bob.>", direct=True))
    await _nothing(lambda: js.add_consumer(tenant_events_stream("bob"), ConsumerConfig(
        name="w1", filter_subject="events.bob.>", ack_policy=AckPolicy.NONE)))
    still_his = await bobs.pull_subscribe_bind(consumer="w1", stream=tenant_events_stream("bob"))
    got = await still_his.fetch(1, timeout=10)
    assert got[0].subject.startswith("events.bob.talk-42.")
    live = await alice.nc.subscribe(">")
    await alice.nc.flush()
    await ctl.nc.jetstream().publish("events.bob.talk-42.progress.vf-x", b"{}")
    with pytest.raises(nats.errors.TimeoutError):
        while True:  # only her own traffic may arrive (there is none)
            msg = await live.next_msg(timeout=1)
            assert not msg.subject.startswith("events.bob"), msg.subject
    # Asking for it by id finds nothing: job ids are per tenant.
    with pytest.raises(Exception, match="no job with id 'talk-42'"):
        await tenant_client(alice, "alice").result("talk-42", timeout_s=1)


async def test_job_ids_are_per_tenant_and_cannot_be_squatted(
        alice: Session, bob: Session, ctl: Session) -> None:
    job = CaptionJob(video="obj:v.mp4", srt="obj:s.srt")
    raw = b'{"video": "obj:v.mp4", "srt": "obj:s.srt"}'
    # Alice names bob's id every way she can: in the subject, and as message ids.
    for msg_id in ("talk-43", "bob.talk-43"):
        reply = decode_submit_reply((await alice.nc.request(
            "submit.alice.caption.talk-43", raw, headers={"Nats-Msg-Id": msg_id},
            timeout=5)).data)
        assert reply.ok
    await _nothing(lambda: alice.nc.request("submit.bob.caption.talk-43", raw, timeout=1))
    await _nothing(lambda: alice.nc.request("jobs.bob.caption.talk-43", raw, timeout=1))
    receipt = await tenant_client(bob, "bob").submit(job, job_id="talk-43")
    assert not receipt.duplicate  # bob's own job is queued, not a "duplicate" of alice's
    stored = await ctl.nc.jetstream().stream_info(JOBS_STREAM, subjects_filter="jobs.>")
    assert stored.state.subjects == {"jobs.alice.caption.talk-43": 1,
                                     "jobs.bob.caption.talk-43": 1}


async def test_no_reply_subject_reaches_the_control_plane(
        secure: Secure, alice: Session, ctl: Session, media_dir: Path) -> None:
    """A JetStream publish answers its reply subject; inside one account that could write any
    KV key. From a tenant or agent account, the server rewrites the reply."""
    fleet = ctl.nc.jetstream()
    auth_before = await (await fleet.key_value(AUTH_BUCKET)).get("tenants")
    targets = [f"$KV.{AUTH_BUCKET}.revocations", f"$KV.{JOBSTATE_BUCKET}.bob.j1",
               f"$KV.{FLEET_BUCKET}.instances.vf-x", "$JS.API.STREAM.DELETE.JOBS"]
    raw = b'{"video": "obj:v.mp4", "srt": "obj:s.srt"}'
    await tenant_client(alice, "alice").upload_input(media_dir / "talk.srt", name="a.srt")
    # Where the answers go instead: alice's own account, where she can watch for them.
    landed = [await alice.nc.subscribe(target) for target in targets]
    async with session(secure, "agent", "vf-a1") as agent:
        for target in targets:
            await alice.nc.publish("submit.alice.caption.j9", raw, reply=target)
            await alice.nc.publish(f"$O.{inputs_bucket('alice')}.C.x", b"chunk", reply=target)
            await agent.nc.publish("fleet.report.vf-a1", b"{}", reply=target)
            await agent.nc.publish("agents.vf-a1.heartbeat", b"{}", reply=target)
        for sub in landed:  # the gateway's answer and the PubAck, both back home
            answers = [await sub.next_msg(timeout=10) for _ in range(2)]
            assert {b'"ok"' in m.data or b'"stream"' in m.data for m in answers} == {True}
        # The agent may not subscribe there; an answered report comes after every earlier
        # one (the dispatcher answers one agent's reports in order).
        await agent.nc.request("fleet.report.vf-a1", b"{}", timeout=5)
    assert await _keys(fleet, FLEET_BUCKET) == []
    assert await _keys(fleet, AUTH_BUCKET) == ["tenants"]  # no revocations key appeared
    assert (await (await fleet.key_value(AUTH_BUCKET)).get("tenants")).revision == \
        auth_before.revision
    assert await _keys(fleet, JOBSTATE_BUCKET) == []
    assert (await fleet.stream_info(JOBS_STREAM)).config.name == JOBS_STREAM


async def test_no_credential_can_roll_up_or_purge_a_control_bucket(
        secure: Secure, ctl: Session) -> None:
    fleet = ctl.nc.jetstream()
    kv = await fleet.key_value(JOBSTATE_BUCKET)
    await kv.put("alice.j1", b'{"kind":"queued"}')
    await kv.put("bob.j2", b'{"kind":"queued"}')
    async with session(secure, "agent", "vf-a1") as agent:
        js = agent.nc.jetstream(prefix=FLEET_API_PREFIX)
        await agent.denied(f"$KV.{JOBSTATE_BUCKET}.alice.j1", lambda: js.publish(
            f"$KV.{JOBSTATE_BUCKET}.alice.j1", b"x", headers={"Nats-Rollup": "all"}))
        await _nothing(lambda: js.purge_stream(f"KV_{JOBSTATE_BUCKET}"))  # no import
        await _nothing(lambda: js.purge_stream(f"OBJ_{inputs_bucket('bob')}"))
    # Even the fleet's own users cannot: the streams refuse it.
    with pytest.raises(nats.js.errors.APIError, match="rollup"):
        await fleet.publish(f"$KV.{AUTH_BUCKET}.x", b"x", headers={"Nats-Rollup": "all"})
    with pytest.raises(nats.js.errors.APIError, match="purge"):
        await fleet.purge_stream(f"KV_{JOBSTATE_BUCKET}")
    assert await _keys(fleet, JOBSTATE_BUCKET) == ["alice.j1", "bob.j2"]


async def test_agents_cannot_read_job_bodies_by_sequence_or_renew_for_others(
        secure: Secure, alice: Session, media_dir: Path) -> None:
    await tenant_client(alice, "alice").upload_input(media_dir / "talk.srt", name="a.srt")
    async with session(secure, "agent", "vf-a1") as agent:
        js = agent.nc.jetstream(prefix=FLEET_API_PREFIX)
        await _nothing(lambda: js.get_msg(JOBS_STREAM, seq=1))
        await _nothing(lambda: js.add_consumer(JOBS_STREAM, ConsumerConfig(
            name="steal", filter_subject="jobs.>")))
        results = f"OBJ_{results_bucket('alice')}"  # writes only: no consumer on results
        await _nothing(lambda: js.add_consumer(results, ConsumerConfig(
            name="peek", filter_subject=f"$O.{results_bucket('alice')}.C.>")))
        await agent.denied("fleet.renew.vf-a2", lambda: agent.nc.request(
            "fleet.renew.vf-a2", b"", timeout=1))


async def test_adding_a_tenant_does_not_cut_off_working_agents(
        secure: Secure, ctl: Session) -> None:
    """The agent role's template names no tenant: a changed template would make the server
    close every agent's connection, mid job."""
    async with session(secure, "agent", "vf-a1") as agent, \
            session(secure, "system", "sys") as system:
        closed = agent.nc.stats["reconnects"]
        carol = await create_tenant(ctl.nc.jetstream(), system.nc, secure.keys, "carol")
        await ensure_tenant(ctl.nc.jetstream(), TEST_TOPOLOGY, carol.name)
        await agent.nc.request("fleet.work.vf-a1", b'{"wait_s": 0}', timeout=5)  # still served
        assert agent.nc.is_connected and agent.nc.stats["reconnects"] == closed
        assert not agent.errors


async def test_the_gateway_checks_ids_operations_and_bodies_where_they_enter(
        alice: Session, ctl: Session) -> None:
    raw = b'{"video": "obj:v.mp4", "srt": "obj:s.srt"}'
    cases = {"x$y": "invalid_job_id", "caf\u00e9": "invalid_job_id", "a:b": "invalid_job_id",
             "x" * 65: "invalid_job_id"}
    for job_id, code in cases.items():
        reply = decode_submit_reply((await alice.nc.request(
            f"submit.alice.caption.{job_id}", raw, timeout=5)).data)
        assert (reply.ok, reply.code) == (False, code), job_id
        assert "A-Z a-z 0-9 _ -" in reply.message
    reply = decode_submit_reply((await alice.nc.request(
        "submit.alice.transcode.j1", raw, timeout=5)).data)
    assert reply.code == "unknown_operation" and "caption" in reply.message
    reply = decode_submit_reply((await alice.nc.request(
        "submit.alice.caption.j1", b'{"video": 5}', timeout=5)).data)
    assert reply.code == "invalid_job" and "$.video" in reply.message
    reply = decode_submit_reply((await alice.nc.request(
        "submit.alice.caption.j2", b"not json", timeout=5)).data)
    assert reply.code == "invalid_job"
    await alice.nc.publish("submit.alice.caption.j3", b"not json")  # no reply wanted: dropped
    await alice.nc.flush()
    assert (await ctl.nc.jetstream().stream_info(JOBS_STREAM)).state.messages == 0


async def test_a_client_refuses_a_result_that_is_not_the_one_the_outcome_names(
        alice: Session, ctl: Session, tmp_path: Path) -> None:
    """An agent may overwrite objects in a tenant's results bucket (docs/security.md): the
    client checks what it downloads against the outcome's SHA-256."""
    fleet = ctl.nc.jetstream()
    real = await upload(fleet, results_bucket("alice"), "j1/1/out.mp4", io.BytesIO(b"real"))
    forged = await upload(fleet, results_bucket("alice"), "j1/1/x.mp4", io.BytesIO(b"forged"))
    vf = tenant_client(alice, "alice")
    named = OutputInfo(bucket=results_bucket("alice"), name="j1/1/x.mp4", size_bytes=6,
                       sha256=digest_hex(real), duration_s=1.0, width=2, height=2,
                       video_codec="h264", container="mp4")
    assert digest_hex(forged) != named.sha256
    with pytest.raises(ObjectCorrupt, match="SHA-256"):
        await vf.download(named, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()
    elsewhere = OutputInfo(**{**_fields(named), "bucket": results_bucket("bob")})
    with pytest.raises(ObjectCorrupt, match="not this tenant's"):
        await vf.download(elsewhere, tmp_path / "out.mp4")
    good = OutputInfo(**{**_fields(named), "name": "j1/1/out.mp4", "size_bytes": 4})
    assert (await vf.download(good, tmp_path / "out.mp4")).read_bytes() == b"real"


def _fields(info: OutputInfo) -> dict[str, object]:
    return {f: getattr(info, f) for f in info.__struct_fields__}


async def test_queued_jobs_over_a_tenants_quota_are_refused_for_that_tenant_only(
        secure: Secure, ctl: Session) -> None:
    gateway = Gateway(ctl.nc.jetstream(), max_queued_per_tenant=2,
                      counts=QueueCounts(ctl.nc.jetstream(), max_age_s=0.0))
    raw = b'{"video": "obj:v.mp4", "srt": "obj:s.srt"}'
    replies = [await gateway.submit(f"submit.alice.caption.q{n}", raw) for n in range(3)]
    assert [r.ok for r in replies] == [True, True, False]
    assert replies[2].code == "quota_exceeded" and "limit is 2" in replies[2].message
    again = await gateway.submit("submit.alice.caption.q0", raw)  # a retry, say
    assert again.ok and again.duplicate  # is what it was: queued, not refused
    assert (await gateway.submit("submit.bob.caption.q0", raw)).ok  # bob is not affected


async def test_a_full_bucket_refuses_that_tenants_uploads_only(
        secure: Secure, alice: Session, bob: Session, ctl: Session, tmp_path: Path) -> None:
    small = msgspec.structs.replace(TEST_TOPOLOGY, tenant_inputs_max_bytes=600_000)
    await ensure_tenant(ctl.nc.jetstream(), small, "alice", resize=True)
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"x" * 400_000)
    vf = tenant_client(alice, "alice")
    await vf.upload_input(blob, name="a")
    with pytest.raises(StoreFull, match="limit is 600000 bytes"):
        await vf.upload_input(blob, name="b")
    await tenant_client(bob, "bob").upload_input(blob, name="b")


async def test_a_broken_revocation_list_is_never_started_afresh(
        secure: Secure, ctl: Session) -> None:
    """Only FLEET users can write the auth bucket now, but should its list break, revoked
    credentials must stay revoked: nothing is pushed until an operator repairs it."""
    async with session(secure, "system", "sys") as system, \
            session(secure, "agent", "vf-old") as old:
        js = ctl.nc.jetstream()
        await revoke(js, system.nc, secure.keys, old.minted.public_key,
                     account=old.minted.account, until=time.time() + 600)
        kv = await js.key_value(AUTH_BUCKET)
        await kv.put("revocations", b'{"kind": "succeeded"')  # what the old attack wrote
        with pytest.raises(AuthRecordUnreadable, match="repair it by hand"):
            await publish_accounts(js, system.nc, secure.keys)
        with pytest.raises(AuthRecordUnreadable):
            await revoke(js, system.nc, secure.keys, "UXYZ", account=old.minted.account,
                         until=time.time() + 600)
    with pytest.raises((nats.errors.Error, OSError)):  # still revoked
        await connect_as(secure, old.minted)


async def test_a_tenants_consumers_are_capped_for_that_tenant_only(
        alice: Session, bob: Session) -> None:
    js = alice.nc.jetstream(prefix=FLEET_API_PREFIX)
    for n in range(TEST_TOPOLOGY.tenant_max_consumers):
        await js.add_consumer(tenant_events_stream("alice"), ConsumerConfig(
            name=f"c{n}", filter_subject="events.alice.>", ack_policy=AckPolicy.NONE))
    with pytest.raises(nats.js.errors.APIError, match="maximum consumers"):
        await js.add_consumer(tenant_events_stream("alice"), ConsumerConfig(
            name="one-more", filter_subject="events.alice.>", ack_policy=AckPolicy.NONE))
    await bob.nc.jetstream(prefix=FLEET_API_PREFIX).add_consumer(
        tenant_events_stream("bob"), ConsumerConfig(
            name="c0", filter_subject="events.bob.>", ack_policy=AckPolicy.NONE))
