"""The controller renting from the fake Vast.ai, whose machines boot real agents.

End to end: idle is zero machines; a burst of jobs rents machines (never more than the caps
allow), every job finishes once, and every machine is destroyed after the idle timeout. Then
the faults: 429 bursts, 5xx, offers stolen between search and rent, machines stuck loading, an
image the registry refuses; and the dead-man switch of an agent whose controller is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from msgspec import structs
from nats.aio.client import Client as Nats

from broker.config import Secret
from broker.events import Started, Succeeded
from broker.subjects import FLEET_BUCKET
from client.api import Client
from controller.credentials import agent_env as machine_env
from controller.metrics import Metrics
from controller.providers.vast import VastConfig, VastProvider
from tests.fakes.vast import FakeVast
from tests.secure_stack import Secure
from tests.test_controller import (
    AGENT_ENV,
    FAST,
    caption_job,
    one_serving,
    running_controller,
    until,
)

RENTED = structs.replace(FAST, max_instances=3, max_spend_per_hour=5.0, min_gpu_ram_mb=8000,
                         boot_deadline_s=30.0)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeVast]:
    with FakeVast(progress="realtime", boot_stages_s=(0.1, 0.2, 0.2), base_env=os.environ,
                  log_dir=tmp_path / "containers", kill_grace_s=20.0) as made:
        for _ in range(3):
            made.add_offer("RTX 4090")
        yield made


@contextlib.asynccontextmanager
async def vast(fake: FakeVast, *, interruptible: bool = False) -> AsyncIterator[VastProvider]:
    provider = VastProvider(VastConfig(api_key=Secret(fake.api_key), image="vidfleet/agent:t",
                                       base_url=fake.url, min_interval_s={},
                                       backoff_base_s=0.05, backoff_cap_s=0.2,
                                       interruptible=interruptible,
                                       allow_plaintext_agent_url=True))  # loopback nats://
    try:
        yield provider
    finally:
        await provider.aclose()


def agent_env(fake: FakeVast) -> dict[str, str]:
    return {**AGENT_ENV, "VIDFLEET_VAST_URL": fake.url}


class Peak:
    """The most machines alive and the highest burn rate the fake ever billed, sampled at
    every fleet update."""

    def __init__(self, fake: FakeVast) -> None:
        self.fake, self.machines, self.rate = fake, 0, 0.0

    def sample(self) -> None:
        self.machines = max(self.machines, len(self.fake.instances()))
        self.rate = max(self.rate, self.fake.burn_rate())


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_ten_jobs_rent_machines_finish_and_every_machine_is_destroyed(
        nats_server: Secure, nc: Nats, js, fleet_client: Client, operator: Client,
        fake: FakeVast, media_dir: Path) -> None:
    kv = await js.key_value(FLEET_BUCKET)
    peak = Peak(fake)
    async with vast(fake) as provider, running_controller(
            nats_server, nc, provider, RENTED, agent_env=agent_env(fake)):

        async def idle_reported() -> bool:
            summary, machines = await operator.fleet()
            return summary is not None and not machines

        await until(kv, idle_reported, 15)
        assert fake.instances() == [] and fake.create_requests == []  # idle: zero machines

        receipts = [await fleet_client.submit(await caption_job(fleet_client, media_dir))
                    for _ in range(10)]

        async def all_done() -> bool:
            peak.sample()
            return all([await fleet_client.outcome(r.job_id) for r in receipts])

        await until(kv, all_done, 150)

        async def all_gone() -> bool:
            peak.sample()
            _, machines = await operator.fleet()
            return not machines and not fake.instances() and fake.alive_count() == 0

        await until(kv, all_gone, 60)
        bill = 100.0 - fake.credit  # the fake's own accounting (it started with $100)

        async def billed_in_full() -> bool:  # a summary read after the last machine went
            summary, _ = await operator.fleet()
            return summary is not None and summary.billed_by_provider and \
                summary.billed_today == pytest.approx(bill, abs=1e-6)

        await until(kv, billed_in_full, 30)
        summary, _ = await operator.fleet()
    results = [await fleet_client.result(r.job_id, timeout_s=5) for r in receipts]
    assert all(isinstance(r, Succeeded) for r in results)
    assert {r.agent_id for r in results} <= {body["label"] for body in fake.create_requests}
    assert all(r.price_per_hour > 0 and r.cost_usd > 0 for r in results)  # type: ignore[union-attr]
    # Every dollar the provider billed is either in a job's cost or the fleet's own.
    assert summary is not None
    jobs_paid = sum(r.cost_usd for r in results)  # type: ignore[union-attr]
    assert summary.attributed_today == pytest.approx(jobs_paid, abs=1e-5)
    assert summary.attributed_today + summary.unattributed_today == pytest.approx(bill, abs=1e-5)
    assert summary.unattributed_today >= 0  # no job was charged more than was billed
    assert 1 <= peak.machines <= RENTED.max_instances
    for body in fake.create_requests:  # the machine's env: its settings, no account secret
        assert fake.api_key not in str(body)
        assert body["env"]["VIDFLEET_AGENT_ID"] == body["label"]


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_faults_are_recovered_and_the_caps_hold(
        nats_server: Secure, nc: Nats, js, fleet_client: Client, operator: Client,
        fake: FakeVast, media_dir: Path) -> None:
    kv = await js.key_value(FLEET_BUCKET)
    # An RTX 3060 and one RTX 4090. The drain objective: the wait objective destroys a
    # booting machine once no job needs it, here the stuck one before the deadline this
    # test is about (tests/test_policy.py has that case).
    capped = structs.replace(RENTED, max_instances=4, max_spend_per_hour=0.75,
                             boot_deadline_s=5.0, target_wait_s=0.0)
    fake.rate_limit_burst(3, endpoint="list", text=True)
    fake.server_errors(2, status=503, endpoint="search")
    fake.steal_offer(9_100_004, status=410)  # an RTX 4090 taken by someone else
    fake.fail_next_boot("stuck")  # the first machine never leaves loading
    peak = Peak(fake)
    metrics = Metrics()
    async with vast(fake) as provider, running_controller(
            nats_server, nc, provider, capped, agent_env=agent_env(fake), metrics=metrics):
        receipts = [await fleet_client.submit(await caption_job(fleet_client, media_dir))
                    for _ in range(6)]

        async def all_done() -> bool:
            peak.sample()
            return all([await fleet_client.outcome(r.job_id) for r in receipts])

        await until(kv, all_done, 120)

        async def all_gone() -> bool:
            peak.sample()
            return not (await operator.fleet())[1] and not fake.instances()

        await until(kv, all_gone, 60)
    assert all([isinstance(await fleet_client.result(r.job_id, timeout_s=5), Succeeded)
                for r in receipts])
    assert peak.rate <= capped.max_spend_per_hour
    stuck = [i for i in fake.instances(include_destroyed=True) if i.actual_status == "loading"]
    assert stuck and all(i.destroyed for i in stuck)  # destroyed at the boot deadline
    later = [b for b in fake.create_requests[1:]]
    assert all(b["label"] != fake.create_requests[0]["label"] for b in later)
    # What an operator's Prometheus sees of it: the stuck boot as the one failed rent, the
    # machines that served in the boot histogram, the six jobs by outcome.
    figure = metrics.registry.get_sample_value
    failures = {s.labels["reason"]: s.value for m in metrics.rent_failures.collect()
                for s in m.samples if s.name.endswith("_total")}
    assert failures == {"boot_deadline": len(stuck)}
    served = {r.agent_id for r in [await fleet_client.result(r.job_id) for r in receipts]}
    assert figure("vidfleet_boot_seconds_count", {}) >= len(served) >= 1
    assert figure("vidfleet_jobs_total", {"operation": "caption", "outcome": "succeeded",
                                          "cached": "false"}) == 6
    assert figure("vidfleet_instances", {"state": "serving"}) == 0  # all gone


@pytest.mark.timeout(150)
async def test_an_outbid_machine_is_replaced_and_every_job_runs_once(
        nats_server: Secure, nc: Nats, js, fleet_client: Client, operator: Client,
        fake: FakeVast, media_dir: Path) -> None:
    """Interruptible machines: each rented at its own offer's minimum bid plus the margin,
    counted at what it bills. One outbid mid-run (Vast.ai stops it) is destroyed and its host
    avoided; the jobs finish on another machine, each exactly once, and the controller has
    learned an outbid rate for that GPU model (``vidfleet status`` shows it)."""
    kv = await js.key_value(FLEET_BUCKET)
    one = structs.replace(RENTED, max_instances=1)  # the replacement must be another host
    reasons: set[str] = set()
    seen: dict[str, tuple[str, float]] = {}  # label -> (GPU, the price the fleet counts)
    async with vast(fake, interruptible=True) as provider, running_controller(
            nats_server, nc, provider, one, agent_env=agent_env(fake)):
        receipts = [await fleet_client.submit(await caption_job(fleet_client, media_dir))
                    for _ in range(4)]
        await until(kv, functools.partial(one_serving, operator), 60)
        [first] = fake.instances()
        _, [serving] = await operator.fleet()
        seen[serving.label] = (serving.gpu_name, serving.price_per_hour)
        fake.outbid(first.id)

        learned: dict[str, float] = {}

        async def all_done() -> bool:
            summary, machines = await operator.fleet()
            reasons.update(m.reason for m in machines if m.reason)
            seen.update({m.label: (m.gpu_name, m.price_per_hour) for m in machines})
            learned.update(summary.outbids_per_hour if summary else {})
            return bool(learned) and all([await fleet_client.outcome(r.job_id)
                                          for r in receipts])

        await until(kv, all_done, 120)
    results = [await fleet_client.result(r.job_id, timeout_s=5) for r in receipts]
    assert all(isinstance(r, Succeeded) for r in results)
    assert "outbid: the provider stopped this interruptible machine" in reasons
    outbid_gpu = seen[first.label][0]
    assert learned[outbid_gpu] > 0 and learned[outbid_gpu] == max(learned.values())
    min_bid = {"RTX 4090": 0.18, "RTX 3060": 0.05}  # the fake's asks
    storage = 0.15 * 16 / 720  # its storage ask for our 16 GB
    for create in fake.create_requests:  # each at its own offer's bid, counted as it bills
        gpu, counted = seen[create["label"]]
        assert create["price"] == pytest.approx(min_bid[gpu] * 1.1)
        assert counted == pytest.approx(create["price"] + storage)
    later = [i for i in fake.instances(include_destroyed=True) if i.id != first.id]
    assert later and all(i.machine_id != first.machine_id for i in later)  # host avoided
    assert {r.agent_id for r in results} <= {i.label for i in later} | {first.label}


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_a_machine_with_two_slots_runs_two_jobs_at_once_each_paying_half(
        nats_server: Secure, nc: Nats, js, fleet_client: Client, operator: Client,
        fake: FakeVast, media_dir: Path) -> None:
    """Several jobs per GPU, end to end: the controller rents one machine for two queued jobs
    (VIDFLEET_SLOTS=2 in its environment), its agent measures its throughput at one and two
    encodes at once and runs both jobs at once (told to, whatever it measured: two libx264
    encodes on two cores gain nothing), and each job pays half the machine's price; the jobs'
    costs are what the fleet attributes."""
    kv = await js.key_value(FLEET_BUCKET)
    two = structs.replace(RENTED, max_instances=2, slots=2)
    machine_price: dict[str, float] = {}
    slots_seen: set[int] = set()
    env = {**agent_env(fake), "VIDFLEET_SLOTS_MIN_GAIN": "-1"}
    async with vast(fake) as provider, running_controller(
            nats_server, nc, provider, two, agent_env=env):
        receipts = [await fleet_client.submit(await caption_job(fleet_client, media_dir))
                    for _ in range(2)]

        async def all_done() -> bool:
            _, machines = await operator.fleet()
            machine_price.update({m.label: m.price_per_hour for m in machines})
            slots_seen.update(m.slots for m in machines if m.first_heartbeat_at)
            return all([await fleet_client.outcome(r.job_id) for r in receipts])

        await until(kv, all_done, 90)
        done_at = time.time()

        async def summed_after() -> bool:  # a summary written after both leases ended
            summary, _ = await operator.fleet()
            return summary is not None and summary.at > done_at

        await until(kv, summed_after, 10)
        summary, _ = await operator.fleet()
    assert [body["env"]["VIDFLEET_SLOTS"] for body in fake.create_requests] == ["2"]
    assert slots_seen == {2}  # as its heartbeats said
    results = [await fleet_client.result(r.job_id, timeout_s=5) for r in receipts]
    assert all(isinstance(r, Succeeded) for r in results)
    [label] = {r.agent_id for r in results}  # one machine ran both
    assert all(r.price_per_hour == pytest.approx(machine_price[label] / 2)  # type: ignore[union-attr]
               for r in results)
    windows = []
    for r in receipts:
        events = [e async for e in fleet_client.watch(r.job_id, timeout_s=10)]
        started = next(e.at for e in events if isinstance(e, Started))
        windows.append((started, next(e.at for e in events if isinstance(e, Succeeded))))
    assert max(w[0] for w in windows) < min(w[1] for w in windows)  # they overlapped
    assert summary is not None
    assert summary.attributed_today == pytest.approx(
        sum(r.cost_usd for r in results), abs=1e-5)  # type: ignore[union-attr]


@pytest.mark.timeout(90)
async def test_a_refused_image_pauses_renting_with_an_alarm(
        nats_server: Secure, nc: Nats, js, fleet_client: Client, operator: Client,
        fake: FakeVast, media_dir: Path) -> None:
    kv = await js.key_value(FLEET_BUCKET)
    fake.fail_next_boot("pull_denied")
    async with vast(fake) as provider, running_controller(
            nats_server, nc, provider, RENTED, agent_env=agent_env(fake)):
        await fleet_client.submit(await caption_job(fleet_client, media_dir))

        async def alarmed_and_cleaned() -> bool:
            summary, machines = await operator.fleet()
            return (summary is not None and any("pull access denied" in a
                                                for a in summary.alarms)
                    and not machines and not fake.instances())

        await until(kv, alarmed_and_cleaned, 60)
        assert len(fake.create_requests) == 1  # no machine after machine with the same image


@pytest.mark.timeout(60)
async def test_dead_man_switch_destroys_its_own_instance(
        nc: Nats, js, nats_server: Secure, fake: FakeVast, tmp_path: Path) -> None:
    async with vast(fake) as provider:
        offer = next(o for o in await provider.search_offers() if o.gpu_name == "RTX 4090")
        beats = await nc.subscribe("agents.vf-lonely.heartbeat")
        await provider.launch(offer, label="vf-lonely", env={
            "VIDFLEET_NATS_URL": nats_server.url, "VIDFLEET_DEADMAN_S": "1",
            "VIDFLEET_VAST_URL": fake.url, "VIDFLEET_HEARTBEAT_INTERVAL_S": "0.5",
            "VIDFLEET_WORK_DIR": str(tmp_path / "w"),
            **machine_env(nats_server.mint("agent", "vf-lonely"))})
        await beats.next_msg(timeout=30)  # booted; no controller anywhere
        await asyncio.to_thread(fake.wait_for, lambda f: not f.instances(), 30)
    gone = fake.instances(include_destroyed=True)
    assert [i.label for i in gone] == ["vf-lonely"] and gone[0].destroyed
    deletes = fake.requests("destroy")  # made with the instance's own key, not the account's
    assert deletes and all(fake.api_key not in r.authorization for r in deletes)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_controller_killed_mid_run_and_restarted_leaves_no_orphans_or_duplicates(
        nats_server: Secure, nc: Nats, js, fleet_client: Client, operator: Client,
        fake: FakeVast, media_dir: Path, tmp_path: Path) -> None:
    kv = await js.key_value(FLEET_BUCKET)
    env = {**os.environ, **AGENT_ENV, "VIDFLEET_NATS_URL": nats_server.url,
           "VIDFLEET_AUTH_DIR": str(nats_server.auth.path),
           "VIDFLEET_PROVIDER": "vast", "VIDFLEET_VAST_URL": fake.url,
           "VIDFLEET_VAST_API_KEY": fake.api_key, "VIDFLEET_VAST_IMAGE": "vidfleet/agent:t",
           "VIDFLEET_TICK_S": "0.5", "VIDFLEET_MAX_INSTANCES": "2",
           "VIDFLEET_RENT_COOLDOWN_S": "0", "VIDFLEET_IDLE_TIMEOUT_S": "2",
           # The drain objective rents two and keeps both (the wait objective would
           # destroy the second while it boots once the first has taken the jobs).
           "VIDFLEET_TARGET_WAIT_S": "0", "VIDFLEET_TARGET_DRAIN_S": "30",
           "VIDFLEET_AGENT_HEARTBEAT_INTERVAL_S": "0.5",
           "VIDFLEET_ALLOW_PLAINTEXT_AGENT_URL": "1"}  # loopback nats://
    log = open(tmp_path / "controller.log", "ab")  # noqa: SIM115
    start = [sys.executable, "-m", "controller"]
    first = await asyncio.create_subprocess_exec(*start, env=env, stdout=log, stderr=log)
    receipts = [await fleet_client.submit(await caption_job(fleet_client, media_dir))
                for _ in range(6)]
    peak = Peak(fake)
    second = None
    try:
        async def two_booted() -> bool:  # mid-run: machines rented, jobs running
            peak.sample()
            return sum(1 for i in fake.instances() if i.alive) == 2

        await until(kv, two_booted, 60)
        first.kill()  # SIGKILL: no goodbye, machines left as they are
        await first.wait()
        second = await asyncio.create_subprocess_exec(*start, env=env, stdout=log,
                                                      stderr=log)

        async def all_done_and_gone() -> bool:
            peak.sample()
            done = all([await fleet_client.outcome(r.job_id) for r in receipts])
            return done and not (await operator.fleet())[1] and not fake.instances()

        await until(kv, all_done_and_gone, 150)
    finally:
        for proc in (first, second):
            if proc is not None and proc.returncode is None:
                proc.terminate()
                await proc.wait()
        log.close()
    assert all([isinstance(await fleet_client.result(r.job_id, timeout_s=5), Succeeded)
                for r in receipts])
    assert peak.machines <= 2  # the new controller adopted them instead of renting more
    labels = [b["label"] for b in fake.create_requests]
    assert len(labels) == len(set(labels))
    assert fake.alive_count() == 0


async def test_a_launch_the_image_cannot_start_ends_as_an_exited_instance(
        fake: FakeVast) -> None:
    """The fake runs the create request's own command (runtype args: onstart, then args),
    so a launch naming something the image does not have fails here as it would there."""
    provider = VastProvider(VastConfig(api_key=Secret(fake.api_key), image="vidfleet/agent:t",
                                       base_url=fake.url, min_interval_s={},
                                       onstart="python3.99", allow_plaintext_agent_url=True))
    try:
        offer = next(o for o in await provider.search_offers() if o.gpu_name == "RTX 4090")
        await provider.launch(offer, label="vf-nopython", env={
            "VIDFLEET_NATS_URL": "nats://127.0.0.1:9"})
        await asyncio.to_thread(
            fake.wait_for, lambda f: any(i.actual_status == "exited" for i in f.instances()),
            30)
    finally:
        await provider.aclose()
