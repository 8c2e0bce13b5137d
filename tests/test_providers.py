"""The provider contract, run over every provider: ``local`` subprocesses, and ``vast``
against the fake Vast.ai server, whose instances boot on their own and run a real agent."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker.config import Secret
from controller.credentials import agent_env
from controller.providers.base import NoCapacity, Provider
from controller.providers.local import LocalProvider
from controller.providers.vast import VastConfig, VastProvider
from tests.fakes.vast import FakeVast


@pytest.fixture(params=["local", "vast"])
async def provider(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Provider]:
    if request.param == "local":
        local = LocalProvider(max_agents=2, grace_s=20.0, work_root=str(tmp_path / "work"))
        yield local
        for info in await local.list_instances(""):
            await local.terminate(info.provider_id)
        return
    with FakeVast(progress="realtime", boot_stages_s=(0.05, 0.05, 0.05), base_env=os.environ,
                  log_dir=tmp_path / "containers", kill_grace_s=20.0) as fake:
        vast = VastProvider(VastConfig(api_key=Secret(fake.api_key), image="vidfleet/agent:test",
                                       base_url=fake.url, min_interval_s={},
                                       backoff_base_s=0.05, allow_plaintext_agent_url=True))
        yield vast
        for info in await vast.list_instances(""):
            await vast.terminate(info.provider_id)
        await vast.aclose()


async def test_launch_list_terminate(provider: Provider, nc, js, nats_server,
                                     tmp_path: Path) -> None:
    offers = await provider.search_offers()
    assert offers
    beats = await nc.subscribe("agents.vf-test-1.heartbeat")
    info = await provider.launch(offers[0], label="vf-test-1", env={
        "VIDFLEET_NATS_URL": nats_server.url, "VIDFLEET_WORK_DIR": str(tmp_path / "w"),
        "VIDFLEET_HEARTBEAT_INTERVAL_S": "0.5",
        **agent_env(nats_server.mint("agent", "vf-test-1"))})
    await beats.next_msg(timeout=30)  # the machine's agent booted and connected out
    listed = await provider.list_instances("vf-test-")
    assert [(i.provider_id, i.state) for i in listed] == [(info.provider_id, "running")]
    assert await provider.list_instances("someone-else-") == []
    await provider.terminate(info.provider_id)
    await provider.terminate(info.provider_id)  # idempotent: gone is success
    assert await provider.list_instances("vf-test-") == []


async def test_a_taken_offer_is_no_capacity(provider: Provider, nats_server,
                                            tmp_path: Path) -> None:
    offer = (await provider.search_offers())[0]
    env = {"VIDFLEET_NATS_URL": nats_server.url, "VIDFLEET_WORK_DIR": str(tmp_path / "w")}
    await provider.launch(offer, label="vf-a", env=env)
    with pytest.raises(NoCapacity):
        await provider.launch(offer, label="vf-b", env=env)


async def test_terminating_an_unknown_machine_is_success(provider: Provider) -> None:
    await provider.terminate("999999")
    assert await provider.list_instances("") == []
