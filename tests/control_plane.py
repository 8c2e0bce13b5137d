"""The controller's bus services without its scaling loop: the submit gateway (the one writer
of JOBS) and the dispatcher (the one reader), and the topology the tests run them on. Tests that
run agents and clients without a whole controller run these, as the controller would."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.aio.client import Client as Nats
from nats.js import JetStreamContext

from broker.topology import TopologyConfig
from controller.dispatcher import Dispatcher
from controller.gateway import Gateway

__all__ = ["TEST_TOPOLOGY", "ControlPlane", "control_plane"]

# Short leases so a killed agent's job comes back within seconds.
TEST_TOPOLOGY = TopologyConfig(ack_wait_s=3.0, max_deliver=4,
                               tenant_inputs_max_bytes=256 * 2**20,
                               tenant_results_max_bytes=256 * 2**20,
                               tenant_max_consumers=16, events_max_bytes=64 * 2**20,
                               tenant_events_max_bytes=16 * 2**20,
                               jobstate_max_bytes=16 * 2**20)


@dataclass(frozen=True)
class ControlPlane:
    gateway: Gateway
    dispatcher: Dispatcher


@contextlib.asynccontextmanager
async def control_plane(js: JetStreamContext, nc: Nats) -> AsyncIterator[ControlPlane]:
    gateway, dispatcher = Gateway(js), Dispatcher(js)
    await gateway.start(nc)
    await dispatcher.start(nc)
    try:
        yield ControlPlane(gateway, dispatcher)
    finally:
        await dispatcher.stop()
        await gateway.stop()
