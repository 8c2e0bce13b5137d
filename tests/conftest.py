"""Real nats-server per test (operator mode, as ``vidfleet up`` runs it: tests/secure_stack.py;
a fresh JetStream dir each time: it starts in ~0.1 s), real FFmpeg on tiny generated media,
agents run in-process or as real subprocesses, each with its own agent credentials."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext

from broker.auth_store import create_tenant
from broker.connect import connect
from broker.logs import setup_logging
from broker.subjects import DEFAULT_TENANT
from broker.topology import ensure_topology
from client.api import Client
from controller.credentials import agent_env
from gpu_agent.agent import Agent
from gpu_agent.config import AgentConfig
from gpu_agent.probe import EncoderProbe, probe_encoders
from gpu_agent.worker import JobOutcome
from tests.control_plane import TEST_TOPOLOGY, ControlPlane, control_plane
from tests.media import TWO_CUES_SRT, make_video

if TYPE_CHECKING:
    from tests.secure_stack import Secure

pytest_plugins = ("tests.secure_stack",)  # the operator-mode server: ``nats_server`` and more


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    setup_logging("tests", level="DEBUG")


@pytest.fixture(scope="session", autouse=True)
def _metrics_on_free_ports() -> None:
    """Every controller a test starts serves its metrics, each on a port of its own (the
    default, 9464, would be taken by the first); a test that scrapes sets its own."""
    os.environ.setdefault("VIDFLEET_METRICS_LISTEN", "127.0.0.1:0")


@pytest.fixture
async def nc(nats_server: Secure) -> AsyncIterator[Nats]:
    """A controller's connection (FLEET): what tests set up and inspect the fleet with."""
    conn = await connect(nats_server.url, name="test-admin",
                         credentials=nats_server.credentials("controller", "test-admin"))
    yield conn
    await conn.close()


@pytest.fixture
async def js(nc: Nats, nats_server: Secure) -> JetStreamContext:
    """The topology and tenant ``default`` (its account and object stores), as ``vidfleet up``
    makes them."""
    js = nc.jetstream()
    await ensure_topology(js, TEST_TOPOLOGY)
    system = await connect(nats_server.url, name="test-system",
                           credentials=nats_server.credentials("system", "test-system"))
    try:
        nats_server.tenants[DEFAULT_TENANT] = await create_tenant(
            js, system, nats_server.keys, DEFAULT_TENANT)
    finally:
        await system.close()
    return js


@pytest.fixture
async def control(js: JetStreamContext, nc: Nats) -> AsyncIterator[ControlPlane]:
    """The gateway and the dispatcher (the controller runs them; tests without a controller
    run them here)."""
    async with control_plane(js, nc) as services:
        yield services


@pytest.fixture
async def fleet_client(js, nats_server: Secure) -> AsyncIterator[Client]:
    """A client of tenant ``default`` (its own creds file, as ``vidfleet creds client`` makes
    it), of a stack whose controller runs (it serves submits and dispatch: a second
    dispatcher beside it would lease the same agents' work twice)."""
    vf = await Client.connect(nats_server.url, creds_file=nats_server.creds_file(
        "client", "tests", tenant=DEFAULT_TENANT))
    yield vf
    await vf.close()


@pytest.fixture
async def operator(js, nats_server: Secure) -> AsyncIterator[Client]:
    """The operator's tools (``admin.creds``, FLEET), as ``vidfleet status`` connects: a
    tenant's client may not read the fleet's state."""
    vf = await Client.connect(nats_server.url, creds_file=nats_server.auth.admin_creds)
    yield vf
    await vf.close()


@pytest.fixture
async def client(control: ControlPlane, fleet_client: Client) -> Client:
    """A client, with the control plane run here (no controller)."""
    return fleet_client


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("media")
    make_video(d / "talk.mp4", seconds=3, size="320x240")
    (d / "talk.srt").write_text(TWO_CUES_SRT, encoding="utf-8")
    return d


def agent_config(server: Secure, work_dir: Path, **overrides: object) -> AgentConfig:
    """An agent's settings, with credentials of its own (as the controller mints them for a
    machine it starts: the agent role, named by its id)."""
    agent_id = str(overrides.pop("agent_id", "") or f"agent-{secrets.token_hex(4)}")
    minted = server.mint("agent", agent_id)
    values: dict[str, object] = dict(nats_url=server.url, work_dir=str(work_dir),
                                     agent_id=agent_id, nats_jwt=minted.jwt.reveal(),
                                     nats_seed=minted.seed, fetch_timeout_s=2.0,
                                     heartbeat_interval_s=1.0, progress_interval_s=0.2)
    values.update(overrides)
    return AgentConfig(**values)  # type: ignore[arg-type]


class Outcomes:
    """Collects how an in-process agent ended each job; tests await a specific one."""

    def __init__(self) -> None:
        self.seen: list[JobOutcome] = []
        self._changed = asyncio.Condition()

    def __call__(self, outcome: JobOutcome) -> None:
        self.seen.append(outcome)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, job_id: str, status: str, timeout_s: float = 30) -> JobOutcome:
        async def seen() -> JobOutcome:
            async with self._changed:
                while True:
                    for o in self.seen:
                        if o.job_id == job_id and o.status == status:
                            return o
                    await self._changed.wait()
        return await asyncio.wait_for(seen(), timeout_s)


_probed: dict[str, EncoderProbe] = {}


async def probe_once(ffmpeg: str) -> EncoderProbe:
    """The real encoder probe, run once per session and ffmpeg: its answer cannot change
    within a run, and each in-process agent probing again cost nearly a second. (Agents run
    as processes, and the image's, still probe for themselves.)"""
    if ffmpeg not in _probed:
        _probed[ffmpeg] = await probe_encoders(ffmpeg)
    return _probed[ffmpeg]


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig,
                        outcomes: Outcomes | None = None) -> AsyncIterator[Agent]:
    """An in-process agent, bound and pulling when entered; stopped cleanly on exit."""
    agent, stop = Agent(config, on_outcome=outcomes, probe=probe_once), asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    ready = asyncio.create_task(agent.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raise the agent's start-up error
    assert ready in done, "agent did not become ready within 30 s"
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.fixture
def outcomes() -> Outcomes:
    return Outcomes()


@pytest.fixture
async def agent(js, control: ControlPlane, nats_server: Secure, tmp_path: Path,
                outcomes: Outcomes) -> AsyncIterator[Agent]:
    """An in-process agent (and the control plane, so that jobs can reach it)."""
    async with running_agent(agent_config(nats_server, tmp_path / "agent"), outcomes) as a:
        yield a


@contextlib.asynccontextmanager
async def agent_process(nc: Nats, server: Secure, agent_id: str,
                        work_dir: Path) -> AsyncIterator[subprocess.Popen[bytes]]:
    """A real ``python -m gpu_agent`` child with its credentials in its environment, as a
    provider starts it; entered once its first heartbeat arrives; killed on exit if the test
    left it running. Its log is ``<work_dir>.log``."""
    env = {**os.environ, **agent_env(server.mint("agent", agent_id)),
           "VIDFLEET_NATS_URL": server.url, "VIDFLEET_AGENT_ID": agent_id,
           "VIDFLEET_WORK_DIR": str(work_dir), "VIDFLEET_PROGRESS_INTERVAL_S": "0.2",
           "VIDFLEET_HEARTBEAT_INTERVAL_S": "0.5", "VIDFLEET_FETCH_TIMEOUT_S": "2"}
    beats = await nc.subscribe(f"agents.{agent_id}.heartbeat")
    with open(work_dir.with_suffix(".log"), "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "gpu_agent"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            await beats.next_msg(timeout=30)
            await beats.unsubscribe()
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
