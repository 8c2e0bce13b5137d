"""The controller loop against a real nats-server, real agents and the local provider."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import nats.errors
import pytest
from msgspec import structs
from nats.aio.client import Client as Nats
from nats.aio.client import RawCredentials
from nats.js.kv import KeyValue

from broker.config import Secret
from broker.creds import creds_of
from broker.events import Progress, Succeeded
from broker.fleet import AgentCommand, ControllerBeat, encode
from broker.heartbeats import Heartbeat, decode_heartbeat, encode_heartbeat
from broker.jobs import CaptionJob
from broker.subjects import (
    CONTROLLER_HEARTBEAT_SUBJECT,
    FLEET_BUCKET,
    agent_control_subject,
    agent_inbox_prefix,
)
from client.api import Client
from controller.config import ControllerConfig, policy_of
from controller.loop import Controller
from controller.metrics import Metrics
from controller.policy import Policy
from controller.providers.base import Provider
from controller.providers.local import LocalProvider
from gpu_agent.deadman import DeadManSwitch
from tests.conftest import agent_config, agent_process, running_agent
from tests.media import make_video
from tests.secure_stack import Secure, session

FAST = ControllerConfig(tick_s=0.3, idle_timeout_s=1.0, rent_cooldown_s=0.0,
                        heartbeat_timeout_s=10.0, boot_deadline_s=60.0, target_drain_s=30.0,
                        max_instances=2, agent_heartbeat_interval_s=0.5)
WARM = structs.replace(FAST, min_warm=1, idle_timeout_s=600.0)  # one machine stays up
AGENT_ENV = {"VIDFLEET_FETCH_TIMEOUT_S": "2", "VIDFLEET_PROGRESS_INTERVAL_S": "0.2"}


async def caption_job(client: Client, media_dir: Path, video: Path | None = None) -> CaptionJob:
    return CaptionJob(video=await client.upload_input(video or media_dir / "talk.mp4"),
                      srt=await client.upload_input(media_dir / "talk.srt"))


async def one_serving(client: Client) -> bool:
    """The fleet holds one machine, and its agent heartbeats."""
    _, machines = await client.fleet()
    return len(machines) == 1 and machines[0].state == "serving"


async def until(kv: KeyValue, check: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
    """Re-check after every write to the fleet bucket (the controller writes each tick)."""
    watcher = await kv.watchall()

    async def loop() -> None:
        while not await check():
            await watcher.updates(timeout=timeout_s)

    try:
        await asyncio.wait_for(loop(), timeout_s)
    finally:
        await watcher.stop()


@contextlib.asynccontextmanager
async def running_controller(server: Secure, nc: Nats, provider: Provider,
                             config: ControllerConfig = FAST,
                             agent_env: dict[str, str] = AGENT_ENV,
                             metrics: Metrics | None = None) -> AsyncIterator[Controller]:
    """A controller on ``nc`` (FLEET) with the deployment's keys, as ``vidfleet up`` runs it:
    it mints each machine's agent credentials and revokes them when the machine goes."""
    config = structs.replace(config, nats_url=server.url)
    async with session(server, "system", "controller-sys") as system:
        controller = Controller(nc=nc, provider=provider, config=config,
                                policy=policy_of(config), agent_env=agent_env,
                                auth=server.keys, system=system.nc, metrics=metrics)
        stop = asyncio.Event()
        task = asyncio.create_task(controller.run(stop))
        try:
            yield controller
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


@pytest.fixture
async def local(nats_server, tmp_path: Path) -> AsyncIterator[LocalProvider]:
    provider = LocalProvider(max_agents=2, base_env=dict(os.environ), grace_s=20.0,
                             work_root=str(tmp_path / "work"))
    yield provider
    await provider.close(asyncio.Event())


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_scales_from_zero_runs_the_jobs_and_back_to_zero(
        nats_server: Secure, nc: Nats, js, fleet_client: Client, operator: Client,
        local: LocalProvider, media_dir: Path) -> None:
    kv = await js.key_value(FLEET_BUCKET)
    async with running_controller(nats_server, nc, local):
        summary = None

        async def idle_and_reported() -> bool:
            nonlocal summary
            summary, machines = await operator.fleet()
            return summary is not None and not machines

        await until(kv, idle_and_reported, 10)
        assert summary and summary.queued_jobs == 0 and summary.spend_per_hour == 0.0
        assert await local.list_instances("") == []  # nothing runs while idle

        receipts = [await fleet_client.submit(await caption_job(fleet_client, media_dir))
                    for _ in range(3)]
        peak = 0

        async def all_done() -> bool:
            nonlocal peak
            peak = max(peak, len([i for i in await local.list_instances("vf-")
                                  if i.state == "running"]))
            return all([await fleet_client.outcome(r.job_id) for r in receipts])

        await until(kv, all_done, 90)
        results = [await fleet_client.result(r.job_id, timeout_s=5) for r in receipts]
        assert all(isinstance(r, Succeeded) and r.cost_usd == 0.0 for r in results)
        assert 1 <= peak <= FAST.max_instances
        assert {r.agent_id[:3] for r in results} == {"vf-"}  # run by agents it started

        async def back_to_zero() -> bool:
            _, machines = await operator.fleet()
            running = [i for i in await local.list_instances("") if i.state == "running"]
            return not machines and not running

        await until(kv, back_to_zero, 30)  # idle timeout, drain, destroy, verified gone


async def test_status_says_when_the_caps_keep_the_wait_objective_out_of_reach(
        nats_server: Secure, nc: Nats, js, fleet_client: Client, operator: Client,
        local: LocalProvider, media_dir: Path) -> None:
    """Four jobs queued, each expected to take a minute (no job measured yet) and to start
    within 120 s: a machine booting for 90 s starts one in time, and one running its first
    job starts two more, so the objective needs more machines than the one max_instances
    allows. The summary (what `vidfleet status` prints) says so, and says nothing once the
    queue is gone."""
    kv = await js.key_value(FLEET_BUCKET)
    one = structs.replace(FAST, max_instances=1)
    seen: list[str] = []
    async with running_controller(nats_server, nc, local, one):
        receipts = [await fleet_client.submit(await caption_job(fleet_client, media_dir))
                    for _ in range(4)]

        async def all_done() -> bool:
            summary, _ = await operator.fleet()
            if summary is not None and summary.unmet:
                seen.append(summary.unmet)
            return all([await fleet_client.outcome(r.job_id) for r in receipts])

        await until(kv, all_done, 90)

        async def quiet() -> bool:
            summary, _ = await operator.fleet()
            return summary is not None and not summary.unmet and summary.queued_jobs == 0

        await until(kv, quiet, 30)
        summary, _ = await operator.fleet()
    caps = (" more machines: max_instances (1) caps the fleet (every queued job started within "
            "120 s needs more machines)")
    assert seen and all(u.endswith(caps) for u in seen)
    assert summary is not None and summary.objective == "every queued job started within 120 s"


async def test_restart_adopts_its_machines_instead_of_renting_again(
        nats_server: Secure, nc: Nats, js, operator: Client, local: LocalProvider) -> None:
    kv = await js.key_value(FLEET_BUCKET)
    async with running_controller(nats_server, nc, local, WARM):
        await until(kv, functools.partial(one_serving, operator), 60)
    first = (await operator.fleet())[1][0]
    ticks: set[float] = set()

    async def five_ticks() -> bool:
        summary, _ = await operator.fleet()
        ticks.add(summary.at if summary else 0.0)
        return len(ticks) > 5

    async with running_controller(nats_server, nc, local, WARM):
        await until(kv, five_ticks, 30)  # several ticks of the new controller
        _, machines = await operator.fleet()
    assert [m.label for m in machines] == [first.label]
    assert len(await local.list_instances("vf-")) == 1


async def test_a_machine_that_lies_about_its_job_is_destroyed(
        nats_server: Secure, nc: Nats, js, operator: Client, local: LocalProvider) -> None:
    """Busy is what the dispatcher knows. A machine that keeps claiming a job it was never
    given (so that it is never scaled down, and bills on) is destroyed and its host avoided."""
    kv = await js.key_value(FLEET_BUCKET)
    async with running_controller(nats_server, nc, local, WARM):
        await until(kv, functools.partial(one_serving, operator), 60)
        liar = (await operator.fleet())[1][0]
        # What a host that took over the agent's credentials could send.
        async with session(nats_server, "agent", liar.label) as host:
            for _ in range(3):
                await host.nc.publish(f"agents.{liar.label}.heartbeat", encode_heartbeat(
                    Heartbeat(agent_id=liar.label, state="busy", at=time.time(),
                              encoder="libx264", job_id="ghost")))
            await host.nc.flush()

        async def destroyed() -> bool:
            _, machines = await operator.fleet()
            gone = [m for m in machines if m.label == liar.label]
            return not gone or gone[0].state == "destroying"

        await until(kv, destroyed, 30)
    assert liar.label not in [i.label for i in await local.list_instances("vf-")
                              if i.state == "running"]


async def test_a_machine_whose_agent_floods_the_dispatcher_is_destroyed(
        nats_server: Secure, nc: Nats, js, operator: Client, local: LocalProvider) -> None:
    """The machine's host reads the agent's credentials (here from its process environment)
    and sends the dispatcher thousands of messages without waiting for answers, to exhaust
    the controller. The machine is destroyed, and the credentials revoked: the host's
    connection is cut."""
    kv = await js.key_value(FLEET_BUCKET)
    async with running_controller(nats_server, nc, local, WARM):
        await until(kv, functools.partial(one_serving, operator), 60)
        flooder = (await operator.fleet())[1][0]
        environ = dict(line.split("=", 1) for line in Path(
            f"/proc/{flooder.provider_id}/environ").read_text().split("\0") if "=" in line)
        jwt = "".join(environ[f"VIDFLEET_NATS_JWT_{n}"] for n in range(9)
                      if f"VIDFLEET_NATS_JWT_{n}" in environ)
        cut = asyncio.Event()

        async def closed() -> None:
            cut.set()

        host = await nats.connect(nats_server.url, user_credentials=RawCredentials(
            creds_of(jwt, Secret(environ["VIDFLEET_NATS_SEED"]))), closed_cb=closed,
            allow_reconnect=False, inbox_prefix=agent_inbox_prefix(flooder.label))
        inbox = host.new_inbox()
        await host.subscribe(inbox)
        for _ in range(3000):
            await host.publish(f"fleet.report.{flooder.label}", b"{}", reply=inbox)
        await host.flush()

        async def destroyed() -> bool:
            _, machines = await operator.fleet()
            gone = [m for m in machines if m.label == flooder.label]
            return not gone or gone[0].state == "destroying"

        await until(kv, destroyed, 30)
        await asyncio.wait_for(cut.wait(), 30)  # revoked: the server closed it
    assert flooder.label not in [i.label for i in await local.list_instances("vf-")
                                 if i.state == "running"]


async def test_drain_command_lets_the_job_finish_then_the_agent_exits(
        nats_server: Secure, nc: Nats, js, client: Client, tmp_path: Path,
        media_dir: Path) -> None:
    video = make_video(tmp_path / "long.mp4", seconds=12, size="320x240")
    async with agent_process(nc, nats_server, "vf-drain", tmp_path / "w") as proc:
        receipt = await client.submit(await caption_job(client, media_dir, video=video))
        async for event in client.watch(receipt.job_id, timeout_s=30):
            if event.__class__.__name__ == "Started":
                break
        stopped = await nc.subscribe("agents.vf-drain.heartbeat")
        await nc.publish(agent_control_subject("vf-drain"),
                         encode(AgentCommand(command="drain", reason="test")))
        done = await client.result(receipt.job_id, timeout_s=60)
        assert isinstance(done, Succeeded) and done.agent_id == "vf-drain"
        assert await asyncio.wait_for(asyncio.to_thread(proc.wait), 30) == 0
        states = []
        while True:
            msg = await stopped.next_msg(timeout=5)
            states.append(msg.data)
            if b'"stopped"' in msg.data:
                break
        assert any(b'"draining"' in s for s in states)


async def test_dead_man_switch_stops_an_idle_agent_without_a_controller(
        js, nats_server, tmp_path: Path) -> None:
    config = agent_config(nats_server, tmp_path / "a", deadman_s=0.5)
    async with running_agent(config) as agent:
        pass  # entered once pulling
    assert agent.state == "stopped"


async def test_dead_man_switch_counts_beats_and_work_as_signs_of_life(nc: Nats) -> None:
    now, busy = [100.0], [False]
    switch = DeadManSwitch(deadman_s=60.0, clock=lambda: now[0], busy=lambda: busy[0])
    now[0] = 159.0
    assert not switch.due()
    fired = asyncio.Event()
    task = asyncio.create_task(switch.run(nc, fired, check_every_s=0.05))
    await nc.flush()  # let it subscribe before the beat
    while not switch.heard.is_set():  # published until heard: the subscription is async
        await nc.publish(CONTROLLER_HEARTBEAT_SUBJECT,
                         encode(ControllerBeat(at=now[0], interval_s=1)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(switch.heard.wait(), 0.5)
    assert switch.quiet_s() == 0.0  # the controller's beat reset the clock
    busy[0], now[0] = True, 1000.0
    assert not switch.due()  # a job in hand: never, however long the quiet
    busy[0], now[0] = False, 1059.0
    assert not switch.due()
    now[0] = 1060.0
    await asyncio.wait_for(fired.wait(), 5)
    await task


async def test_every_result_carries_its_cost(js, nats_server, client: Client, tmp_path: Path,
                                             media_dir: Path) -> None:
    config = agent_config(nats_server, tmp_path / "a", price_per_hour=0.36)
    async with running_agent(config):
        receipt = await client.submit(await caption_job(client, media_dir))
        done = await client.result(receipt.job_id, timeout_s=60)
    assert isinstance(done, Succeeded) and done.price_per_hour == 0.36
    # The lease (grant to outcome, the dispatcher's clock) spans the attempt's own total_s
    # plus the handover both ways: a few milliseconds on a quiet machine, up to 0.1 s here.
    assert done.cost_usd == pytest.approx(done.timings.total_s * 0.0001, abs=1e-5)
    assert done.cost_usd >= done.timings.total_s * 0.0001 - 1e-6


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_local_agents_do_not_outlive_a_killed_controller(
        nats_server: Secure, nc: Nats, js, tmp_path: Path) -> None:
    env = {**os.environ, **AGENT_ENV, "VIDFLEET_NATS_URL": nats_server.url,
           "VIDFLEET_AUTH_DIR": str(nats_server.auth.path),
           "VIDFLEET_PROVIDER": "local", "VIDFLEET_MIN_WARM": "1", "VIDFLEET_TICK_S": "0.5",
           "VIDFLEET_AGENT_HEARTBEAT_INTERVAL_S": "0.5",
           "VIDFLEET_LOCAL_LOG_DIR": str(tmp_path / "agents")}
    beats = await nc.subscribe("agents.*.heartbeat")
    with open(tmp_path / "controller.log", "wb") as log:
        controller = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller", env=env, stdout=log, stderr=log)
        try:
            first = decode_heartbeat((await beats.next_msg(timeout=60)).data)  # warm agent up
            controller.kill()  # SIGKILL: no chance to stop its children itself
            await controller.wait()
            while True:  # the agent is told by the kernel, and stops
                beat = decode_heartbeat((await beats.next_msg(timeout=30)).data)
                if beat.agent_id == first.agent_id and beat.state == "stopped":
                    break
        finally:
            if controller.returncode is None:
                controller.kill()
                await controller.wait()


def test_every_policy_knob_is_a_controller_setting() -> None:
    settable = set(ControllerConfig.__struct_fields__) | {"max_price_per_hour"}
    assert set(Policy.__struct_fields__) <= settable  # a new knob must not go unset
    rented = policy_of(ControllerConfig(provider="vast", max_spend_per_hour=7.0, min_warm=2))
    assert (rented.max_price_per_hour, rented.min_warm, rented.min_gpu_ram_mb) == (7.0, 2, 8000)
    assert policy_of(ControllerConfig(provider="local")).min_gpu_ram_mb == 0


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_a_killed_controllers_agent_finishes_its_job_under_the_next_one(
        nats_server: Secure, nc: Nats, js, fleet_client: Client, media_dir: Path,
        tmp_path: Path) -> None:
    """The controller is SIGKILLed with its one local agent mid-job, and restarted (as
    `vidfleet up` restarts it). The agent hears of its parent's death and finishes the job
    instead of handing it back; the new controller neither cuts it off (revoking it) nor runs
    a second agent beside it (one local slot), and runs the next job once it is done."""
    env = {**os.environ, **AGENT_ENV, "VIDFLEET_NATS_URL": nats_server.url,
           "VIDFLEET_AUTH_DIR": str(nats_server.auth.path), "VIDFLEET_PROVIDER": "local",
           "VIDFLEET_LOCAL_MAX_AGENTS": "1", "VIDFLEET_TICK_S": "0.5",
           "VIDFLEET_LOCAL_WORK_DIR": str(tmp_path / "work"),
           "VIDFLEET_LOCAL_LOG_DIR": str(tmp_path / "agents")}
    video = make_video(tmp_path / "long.mp4", seconds=12, size="640x360")
    logs = [open(tmp_path / f"controller-{n}.log", "wb") for n in (1, 2)]  # noqa: SIM115
    beats = await nc.subscribe("agents.*.heartbeat")
    controllers = []
    try:
        controllers.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller", env=env, stdout=logs[0], stderr=logs[0]))
        first = await fleet_client.submit(await caption_job(fleet_client, media_dir, video))
        async for event in fleet_client.watch(first.job_id, timeout_s=90):
            if isinstance(event, Progress):
                break  # encoding on the first controller's agent
        old_agent = event.agent_id
        controllers[0].kill()
        await controllers[0].wait()
        controllers.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller", env=env, stdout=logs[1], stderr=logs[1]))
        second = await fleet_client.submit(await caption_job(fleet_client, media_dir))
        done = await fleet_client.result(first.job_id, timeout_s=90)
        assert isinstance(done, Succeeded)
        assert (done.agent_id, done.attempt) == (old_agent, 1)  # finished, not handed back
        after = await fleet_client.result(second.job_id, timeout_s=90)
        assert isinstance(after, Succeeded) and after.agent_id != old_agent
        # One slot: the new agent's first heartbeat came after the old one stopped.
        order = []
        while (msg := await _next_or_none(beats)) is not None:
            beat = decode_heartbeat(msg.data)
            if beat.agent_id == old_agent and beat.state == "stopped":
                order.append("old stopped")
            elif beat.agent_id == after.agent_id and "new" not in order:
                order.append("new")
        assert order == ["old stopped", "new"]
    finally:
        for proc in controllers:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()
        for log in logs:
            log.close()


async def _next_or_none(sub):  # type: ignore[no-untyped-def]
    with contextlib.suppress(nats.errors.TimeoutError):
        return await sub.next_msg(timeout=0.5)
    return None
