"""The dead-man switch: an agent with no work and no controller for a while ends its own machine.

The controller destroys idle machines; if the controller itself is gone (crashed, unreachable,
deleted), nothing would, and a rented GPU bills forever. So an agent listens for the
controller's heartbeat, and once it has had neither work nor a controller heartbeat for
``deadman_s`` while idle, it stops pulling and destroys its own instance with the key Vast.ai
gives each container (``CONTAINER_API_KEY``, scoped to that one instance). A local agent has no
instance to destroy: it just exits. Never fires while a job is in hand.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import httpx
import msgspec
import nats.errors
from loguru import logger
from nats.aio.client import Client
from nats.aio.msg import Msg

from broker.config import Secret
from broker.fleet import decode_controller_beat
from broker.subjects import CONTROLLER_HEARTBEAT_SUBJECT

__all__ = ["DeadManSwitch", "destroy_own_instance"]


class DeadManSwitch:
    def __init__(self, *, deadman_s: float, clock: Callable[[], float],
                 busy: Callable[[], bool]) -> None:
        self._deadman_s = deadman_s
        self._clock = clock
        self._busy = busy
        self._last_sign = clock()  # a controller beat, or work in hand
        self.heard = asyncio.Event()  # set at each controller beat (for tests and metrics)

    def saw_controller(self) -> None:
        self._last_sign = self._clock()
        self.heard.set()

    def quiet_s(self) -> float:
        return self._clock() - self._last_sign

    def due(self) -> bool:
        """True once idle with no controller for ``deadman_s``; work in hand resets it."""
        if self._busy():
            self._last_sign = self._clock()
            return False
        return self._deadman_s > 0 and self.quiet_s() >= self._deadman_s

    async def run(self, nc: Client, fired: asyncio.Event, check_every_s: float = 1.0) -> None:
        """Set ``fired`` once due; return at once when ``deadman_s`` is 0 (switched off)."""
        if self._deadman_s <= 0:
            return

        async def on_beat(msg: Msg) -> None:
            with contextlib.suppress(msgspec.DecodeError):
                decode_controller_beat(msg.data)
                self.saw_controller()

        sub = await nc.subscribe(CONTROLLER_HEARTBEAT_SUBJECT, cb=on_beat)
        try:
            while not self.due():
                await asyncio.sleep(check_every_s)
            logger.warning("no work and no controller for {s:.0f}s: stopping this machine",
                           s=self.quiet_s())
            fired.set()
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()


async def destroy_own_instance(*, base_url: str, instance_id: str, key: Secret,
                               transport: httpx.AsyncBaseTransport | None = None,
                               attempts: int = 5, retry_delay_s: float = 2.0) -> bool:
    """``DELETE /api/v0/instances/{id}/`` with the container's own key. True once destroyed
    (a 404 means already gone). The key is never logged; failures name only the status."""
    url = f"{base_url.rstrip('/')}/api/v0/instances/{instance_id}/"
    headers = {"Authorization": f"Bearer {key.reveal()}", "Accept": "application/json"}
    async with httpx.AsyncClient(transport=transport, timeout=30.0) as http:
        for attempt in range(1, attempts + 1):
            try:
                resp = await http.request("DELETE", url, json={}, headers=headers)
            except httpx.HTTPError as exc:
                logger.warning("self-destroy attempt {n} failed: {error}", n=attempt,
                               error=type(exc).__name__)
            else:
                if resp.status_code == 404 or (resp.status_code == 200
                                               and _success(resp.content)):
                    logger.info("own instance {id} destroyed", id=instance_id)
                    return True
                logger.warning("self-destroy attempt {n}: HTTP {status}", n=attempt,
                               status=resp.status_code)
            await asyncio.sleep(retry_delay_s * attempt)
    return False


def _success(body: bytes) -> bool:
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return False
    return isinstance(data, dict) and data.get("success") is True
