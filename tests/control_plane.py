"""The controller's bus services without its scaling loop: the submit gateway (the one writer
of JOBS) and the dispatcher (the one reader). Tests that run agents and clients without a
whole controller run these, as the controller would."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.aio.client import Client as Nats
from nats.js import JetStreamContext

from controller.dispatcher import Dispatcher
from controller.gateway import Gateway

__all__ = ["ControlPlane", "control_plane"]


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
