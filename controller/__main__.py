"""``python -m controller``: run the controller's loops until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys

from loguru import logger
from msgspec import Struct

from broker.connect import connect
from broker.entrypoint import run_process
from controller.dead_letters import Reaper


class ControllerConfig(Struct, frozen=True, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    log_level: str = "INFO"
    log_json: bool = False


async def _main(config: ControllerConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    nc = await connect(config.nats_url, name="vidfleet-controller")
    try:
        logger.info("controller running: reaping exhausted jobs")
        await Reaper(nc.jetstream()).run(stop)
    finally:
        await nc.drain()


def main() -> int:
    return run_process("controller", ControllerConfig, _main)


if __name__ == "__main__":
    sys.exit(main())
