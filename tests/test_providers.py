"""The provider contract, run over every provider (only ``local`` exists so far)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller.providers.base import NoCapacity, Provider
from controller.providers.local import LocalProvider


@pytest.fixture(params=["local"])
async def provider(request: pytest.FixtureRequest) -> AsyncIterator[Provider]:
    made = LocalProvider(max_agents=2, grace_s=20.0)
    yield made
    for info in await made.list_instances(""):
        await made.terminate(info.provider_id)


async def test_launch_list_terminate(provider: Provider, nc, js, nats_server,
                                     tmp_path: Path) -> None:
    offers = await provider.search_offers()
    assert offers
    beats = await nc.subscribe("agents.vf-test-1.heartbeat")
    info = await provider.launch(offers[0], label="vf-test-1", env={
        "VIDFLEET_NATS_URL": nats_server.url, "VIDFLEET_WORK_DIR": str(tmp_path / "w"),
        "VIDFLEET_HEARTBEAT_INTERVAL_S": "0.5"})
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
