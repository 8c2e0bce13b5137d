"""Real nats-server per test (a fresh JetStream dir each time: it starts in ~0.1 s), real
FFmpeg on tiny generated media, agents run in-process or as real subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from broker.connect import connect
from broker.logs import setup_logging
from broker.server import EmbeddedServer
from broker.topology import TopologyConfig, ensure_topology
from client.api import Client
from gpu_agent.agent import Agent
from gpu_agent.config import AgentConfig
from tests.media import TWO_CUES_SRT, make_video

# Short leases so a killed agent's job comes back within seconds.
TEST_TOPOLOGY = TopologyConfig(ack_wait_s=3.0, max_deliver=4)


@pytest.fixture(scope="session", autouse=True)
def _logging() -> None:
    setup_logging("tests", level="DEBUG")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedServer]:
    with EmbeddedServer(tmp_path / "nats") as server:
        yield server


@pytest.fixture
async def js(nats_server: EmbeddedServer):  # noqa: ANN201
    nc = await connect(nats_server.url, name="test-admin")
    js = nc.jetstream()
    await ensure_topology(js, TEST_TOPOLOGY)
    yield js
    await nc.close()


@pytest.fixture
async def client(js, nats_server: EmbeddedServer) -> AsyncIterator[Client]:  # noqa: ANN001
    vf = await Client.connect(nats_server.url)
    yield vf
    await vf.close()


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("media")
    make_video(d / "talk.mp4")
    (d / "talk.srt").write_text(TWO_CUES_SRT, encoding="utf-8")
    return d


def agent_config(server: EmbeddedServer, work_dir: Path, **overrides: object) -> AgentConfig:
    values: dict[str, object] = dict(nats_url=server.url, work_dir=str(work_dir),
                                     fetch_timeout_s=2.0, heartbeat_interval_s=1.0,
                                     progress_interval_s=0.2)
    values.update(overrides)
    return AgentConfig(**values)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running_agent(config: AgentConfig) -> AsyncIterator[Agent]:
    """An in-process agent, bound and pulling when entered; stopped cleanly on exit."""
    agent, stop = Agent(config), asyncio.Event()
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
async def agent(js, nats_server: EmbeddedServer, tmp_path: Path) -> AsyncIterator[Agent]:  # noqa: ANN001
    async with running_agent(agent_config(nats_server, tmp_path / "agent")) as a:
        yield a
