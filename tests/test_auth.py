"""Operator-mode auth on a real nats-server: every role's denials asserted, expiry, revocation.

A denial shows up in nats-py as an async ``permissions violation`` error (the call itself times
out or returns normally), so each check waits for that error naming the subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import RawCredentials
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from broker.auth import mint_user
from broker.config import Secret
from broker.creds import creds_text
from broker.events import Succeeded
from broker.jobs import CaptionJob
from broker.subjects import (
    FLEET_API_PREFIX,
    FLEET_BUCKET,
    JOBS_STREAM,
    agent_inbox_prefix,
    inputs_bucket,
)
from controller.credentials import CredentialAuthority, agent_env
from gpu_agent.agent import Agent
from gpu_agent.config import AgentConfig
from tests.fakes.vast import FakeContainer, FakeVast, booted_instance
from tests.media import make_video
from tests.secure_stack import Secure, session, tenant_client


@pytest.fixture
def topology(secure: Secure) -> None:
    """(The ``secure`` fixture has made the topology, the gateway and the tenants.)"""


async def test_an_agents_credentials_allow_its_work_and_nothing_else(secure, topology) -> None:
    async with session(secure, "agent", "vf-a1") as agent, \
            session(secure, "agent", "vf-a2") as other:
        js = agent.nc.jetstream(prefix=FLEET_API_PREFIX)
        await agent.nc.request("fleet.work.vf-a1", b'{"wait_s": 0}', timeout=5)  # its work
        await agent.nc.publish("agents.vf-a1.heartbeat", b"{}")
        await _fails(lambda: js.consumer_info(JOBS_STREAM, "agents"))  # the dispatcher's
        await agent.denied("jobs.alice.caption.evil", lambda: agent.nc.publish(
            "jobs.alice.caption.evil", b"{}"))
        await _fails(lambda: js.key_value(FLEET_BUCKET))  # no import leads there
        await _fails(lambda: js.get_msg(JOBS_STREAM, seq=1))
        await _fails(lambda: js.add_consumer(JOBS_STREAM, ConsumerConfig(
            name="steal", filter_subject="jobs.>")))
        await agent.denied(f"{FLEET_API_PREFIX}.STREAM.DELETE.{JOBS_STREAM}",
                           lambda: js.delete_stream(JOBS_STREAM))
        await agent.denied("_INBOX_A.vf-a2.>",
                           lambda: agent.nc.subscribe("_INBOX_A.vf-a2.>"))
        bucket = f"OBJ_{inputs_bucket('alice')}"
        await _fails(lambda: js.purge_stream(bucket))  # a tenant's inputs: no import
        await _fails(lambda: js.publish(  # no writing a tenant's inputs: no import
            f"$O.{inputs_bucket('alice')}.M.eA", b"{}"))
        await agent.denied("events.alice.j1.succeeded.vf-a2", lambda: agent.nc.publish(
            "events.alice.j1.succeeded.vf-a2", b"{}"))  # another agent's name
        await agent.denied("submit.alice.caption.j1", lambda: agent.nc.publish(
            "submit.alice.caption.j1", b"{}"))
        assert not other.errors


async def _fails(action: Callable[[], Awaitable[object]]) -> None:
    """The call finds nothing to answer it: no import leads anywhere (no responders, a time
    out, or the account's own JetStream API saying it is off)."""
    with pytest.raises((nats.errors.Error, TimeoutError)):
        await asyncio.wait_for(action(), 1)  # an answer here comes in milliseconds


async def test_a_tenants_credentials_reach_nothing_of_the_fleet(secure, topology) -> None:
    async with session(secure, "client", "alice", tenant="alice") as alice, \
            session(secure, "controller", "ctl") as ctl:
        for js in (alice.nc.jetstream(prefix=FLEET_API_PREFIX), alice.nc.jetstream()):
            await _fails(lambda js=js: js.key_value(FLEET_BUCKET))
            await _fails(lambda js=js: js.delete_stream(JOBS_STREAM))
            await _fails(lambda js=js: js.stream_info(JOBS_STREAM))
            await _fails(lambda js=js: js.consumer_info(JOBS_STREAM, "agents"))
        await _fails(lambda: alice.nc.request(
            f"{FLEET_API_PREFIX}.CONSUMER.MSG.NEXT.JOBS.agents", b'{"batch":1}', timeout=1))
        beats = await alice.nc.subscribe("agents.*.heartbeat")
        await alice.nc.flush()
        await ctl.nc.publish("agents.vf-x.heartbeat", b"{}")
        await ctl.nc.flush()
        with pytest.raises(nats.errors.TimeoutError):  # the fleet's traffic never reaches it
            await beats.next_msg(timeout=1)
        assert (await ctl.nc.jetstream().stream_info(JOBS_STREAM)).state.messages == 0


async def test_expired_credentials_are_refused(secure, topology) -> None:
    with pytest.raises((nats.errors.Error, OSError)) as refused:
        async with session(secure, "client", "late", tenant="alice", expires_in_s=-60):
            pass
    assert "expired" in str(refused.value).lower() or "authorization" in str(
        refused.value).lower()


async def test_revocation_disconnects_a_live_agent(secure, topology) -> None:
    authority = secure.authority()
    minted = authority.mint_agent("vf-doomed")
    closed = asyncio.Event()

    async def on_closed() -> None:
        closed.set()

    async def ignore(_exc: Exception) -> None:
        pass

    agent = await nats.connect(secure.url, user_credentials=RawCredentials(creds_text(minted)),
                               inbox_prefix=agent_inbox_prefix("vf-doomed"), closed_cb=on_closed,
                               error_cb=ignore, max_reconnect_attempts=1,
                               reconnect_time_wait=0.1)
    async with session(secure, "system", "sys") as system, \
            session(secure, "controller", "ctl") as ctl:
        await authority.revoke(ctl.nc.jetstream(), system.nc, minted.public_key)
    await asyncio.wait_for(closed.wait(), 10)
    assert agent.is_closed
    with pytest.raises((nats.errors.Error, OSError)):
        await nats.connect(secure.url, user_credentials=RawCredentials(creds_text(minted)),
                           max_reconnect_attempts=0, allow_reconnect=False,
                           error_cb=ignore)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_job_runs_end_to_end_with_scoped_credentials(secure, topology, media_dir: Path,
                                                             tmp_path: Path) -> None:
    minted = mint_user(secure.keys, "agent", "vf-ok", expires_in_s=600)
    env = {**os.environ, "VIDFLEET_NATS_URL": secure.url, "VIDFLEET_AGENT_ID": "vf-ok",
           "VIDFLEET_WORK_DIR": str(tmp_path / "w"), "VIDFLEET_FETCH_TIMEOUT_S": "2",
           **agent_env(minted)}
    assert all(len(v) <= 256 for k, v in agent_env(minted).items())  # Vast.ai's env limit
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115
    agent = await asyncio.create_subprocess_exec(sys.executable, "-m", "gpu_agent", env=env,
                                                 stdout=log, stderr=log)
    try:
        async with session(secure, "client", "bob", tenant="bob") as s:
            vf = tenant_client(s, "bob")
            receipt = await vf.submit(CaptionJob(
                video=await vf.upload_input(media_dir / "talk.mp4"),
                srt=await vf.upload_input(media_dir / "talk.srt")))
            kinds = [type(e).__name__ async for e in vf.watch(receipt.job_id, timeout_s=60)]
            done = await vf.result(receipt.job_id, timeout_s=10)
            assert isinstance(done, Succeeded)
            out = await vf.download(done.output, tmp_path / "out.mp4")
            assert out.stat().st_size == done.output.size_bytes
            assert kinds[0] == "Queued" and kinds[-1] == "Succeeded" and not s.errors
        await _stock_client_job(secure, media_dir, tmp_path)
    finally:
        agent.terminate()
        await agent.wait()
        log.close()
    agent_log = (tmp_path / "agent.log").read_text()
    assert "violation" not in agent_log.lower()
    assert minted.seed.reveal() not in agent_log and minted.jwt.reveal() not in agent_log


async def _stock_client_job(secure: Secure, media_dir: Path, tmp_path: Path) -> None:
    """docs/protocol.md's "A stock client, step by step", with nats-py's own calls only: a
    tenant's creds file and the documented settings, nothing of our client library."""
    creds = tmp_path / "alice.creds"
    creds.write_text(creds_text(mint_user(secure.keys, "client", "alice-stock",
                                          expires_in_s=600, tenant=secure.tenants["alice"])))
    nc = await nats.connect(secure.url, user_credentials=str(creds))
    try:
        js = nc.jetstream(prefix="$JS.FLEET.API")
        inputs = await js.object_store("inputs-alice")
        await inputs.put("u1/talk.mp4", (media_dir / "talk.mp4").read_bytes())
        await inputs.put("u1/talk.srt", (media_dir / "talk.srt").read_bytes())
        body = json.dumps({"video": "obj:u1/talk.mp4", "srt": "obj:u1/talk.srt"}).encode()
        reply = json.loads((await nc.request("submit.alice.caption.talk-42", body,
                                             timeout=10)).data)
        assert reply["ok"] and not reply["duplicate"], reply
        await js.add_consumer("EVENTS-alice", ConsumerConfig(
            name="w1", filter_subject="events.alice.talk-42.>", deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE, mem_storage=True, inactive_threshold=60.0))
        follow = await js.pull_subscribe_bind(consumer="w1", stream="EVENTS-alice")
        kinds: list[str] = []
        while not kinds or kinds[-1] not in ("succeeded", "failed"):
            with contextlib.suppress(nats.errors.TimeoutError):
                for msg in await follow.fetch(16, timeout=5):
                    kinds.append(msg.subject.split(".")[3])
                    last = msg
        assert kinds[0] == "queued" and kinds[-1] == "succeeded", kinds
        output = json.loads(last.data)["output"]
        assert output["bucket"] == "results-alice"
        info = await (await js.object_store(output["bucket"])).get_info(output["name"])
        chunks_subject = f"$O.{output['bucket']}.C.{info.nuid}"
        await js.add_consumer(f"OBJ_{output['bucket']}", ConsumerConfig(
            name="d1", filter_subject=chunks_subject, ack_policy=AckPolicy.NONE,
            mem_storage=True, inactive_threshold=30.0))
        chunks = await js.pull_subscribe_bind(consumer="d1", stream=f"OBJ_{output['bucket']}")
        data = b""
        while len(data) < output["size_bytes"]:
            data += b"".join(m.data for m in await chunks.fetch(64, timeout=10))
        assert hashlib.sha256(data).hexdigest() == output["sha256"]
    finally:
        await nc.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_renewal_keeps_a_job_alive_across_expiries(secure, topology, tmp_path: Path,
                                                         media_dir: Path) -> None:
    lifetime_s = 6.0
    video = make_video(tmp_path / "long.mp4", seconds=90, size="640x360")
    minted = mint_user(secure.keys, "agent", "vf-renew", expires_in_s=lifetime_s)
    authority = CredentialAuthority(secure.keys, agent_lifetime_s=lifetime_s,
                                    known_agent=lambda a: minted.public_key
                                    if a == "vf-renew" else None)
    env = {**os.environ, "VIDFLEET_NATS_URL": secure.url, "VIDFLEET_AGENT_ID": "vf-renew",
           "VIDFLEET_WORK_DIR": str(tmp_path / "w"), "VIDFLEET_FETCH_TIMEOUT_S": "2",
           "VIDFLEET_HEARTBEAT_INTERVAL_S": "0.5", **agent_env(minted)}
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115
    agent = await asyncio.create_subprocess_exec(sys.executable, "-m", "gpu_agent", env=env,
                                                 stdout=log, stderr=log)
    try:
        async with session(secure, "controller", "ctl") as ctl, \
                session(secure, "client", "carol", tenant="alice") as s:
            await authority.serve_renewals(ctl.nc)
            vf = tenant_client(s, "alice")
            receipt = await vf.submit(CaptionJob(
                video=await vf.upload_input(video),
                srt=await vf.upload_input(media_dir / "talk.srt")))
            done = await vf.result(receipt.job_id, timeout_s=90)
            assert isinstance(done, Succeeded) and done.attempt == 1  # never redelivered
            assert minted.expires_at is not None
            assert done.at > minted.expires_at  # it outlived the JWT the agent started with
            beats = await ctl.nc.subscribe("agents.vf-renew.heartbeat")
            await beats.next_msg(timeout=10)  # still connected afterwards
            await authority.stop()
    finally:
        agent.terminate()
        await agent.wait()
        log.close()
    text = (tmp_path / "agent.log").read_text()
    assert text.count("credentials renewed") >= 2, text[-2000:]
    assert "expired" not in text.lower() and "violation" not in text.lower()


def start_agent(secure: Secure, minted, tmp_path: Path,  # type: ignore[no-untyped-def]
                ) -> asyncio.Future[asyncio.subprocess.Process]:
    env = {**os.environ, "VIDFLEET_NATS_URL": secure.url, "VIDFLEET_AGENT_ID": minted.name,
           "VIDFLEET_WORK_DIR": str(tmp_path / minted.name), "VIDFLEET_FETCH_TIMEOUT_S": "2",
           "VIDFLEET_HEARTBEAT_INTERVAL_S": "0.5", "VIDFLEET_PROGRESS_INTERVAL_S": "0.2",
           **agent_env(minted)}
    log = open(tmp_path / f"{minted.name}.log", "wb")  # noqa: SIM115
    return asyncio.ensure_future(asyncio.create_subprocess_exec(
        sys.executable, "-m", "gpu_agent", env=env, stdout=log, stderr=log))


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_revoked_agent_is_cut_off_and_its_job_goes_to_another(
        secure, topology, tmp_path: Path, media_dir: Path) -> None:
    video = make_video(tmp_path / "long.mp4", seconds=60, size="640x360")
    first = mint_user(secure.keys, "agent", "vf-first", expires_in_s=600)
    second = mint_user(secure.keys, "agent", "vf-second", expires_in_s=600)
    authority = secure.authority()
    procs = [await start_agent(secure, first, tmp_path)]
    try:
        async with session(secure, "controller", "ctl") as ctl, \
                session(secure, "system", "sys") as system, \
                session(secure, "client", "dave", tenant="bob") as s:
            vf = tenant_client(s, "bob")
            receipt = await vf.submit(CaptionJob(
                video=await vf.upload_input(video),
                srt=await vf.upload_input(media_dir / "talk.srt")))
            async for event in vf.watch(receipt.job_id, timeout_s=60):
                if type(event).__name__ == "Progress":
                    break  # the first agent holds it, mid-encode
            await authority.revoke(ctl.nc.jetstream(), system.nc, first.public_key)
            assert await asyncio.wait_for(procs[0].wait(), 30) == 1  # cut off: it exits
            procs.append(await start_agent(secure, second, tmp_path))
            done = await vf.result(receipt.job_id, timeout_s=90)
        assert isinstance(done, Succeeded) and done.agent_id == "vf-second"
        assert done.attempt == 2  # redelivered after the lease, not failed
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = (tmp_path / "vf-first.log").read_text()
    assert "closed the connection for good" in text


async def test_an_agent_whose_credentials_are_revoked_destroys_its_own_instance(
        secure, topology, tmp_path: Path) -> None:
    """Credentials gone for good: nothing will use this machine again, so it must not bill
    on (it used to raise before it reached the self-destroy)."""
    minted = mint_user(secure.keys, "agent", "vf-orphan", expires_in_s=600)
    authority = secure.authority()
    with FakeVast(start_container=FakeContainer) as fake:
        instance_id, key = booted_instance(fake)
        config = AgentConfig(nats_url=secure.url, nats_jwt=minted.jwt.reveal(),
                             nats_seed=minted.seed, agent_id=minted.name,
                             work_dir=str(tmp_path / "w"), vast_url=fake.url,
                             container_id=str(instance_id), container_api_key=Secret(key))
        agent = Agent(config)
        run = asyncio.create_task(agent.run(asyncio.Event()))
        await asyncio.wait_for(agent.ready.wait(), 30)
        async with session(secure, "controller", "ctl") as ctl, \
                session(secure, "system", "sys") as system:
            await authority.revoke(ctl.nc.jetstream(), system.nc, minted.public_key)
        with pytest.raises(RuntimeError, match="closed the connection for good"):
            await asyncio.wait_for(run, 30)
        [gone] = fake.instances(include_destroyed=True)
        assert gone.destroyed
