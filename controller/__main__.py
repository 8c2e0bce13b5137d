"""``python -m controller``: run the controller's loops until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys

import nats.errors
from loguru import logger
from msgspec import Struct

from broker.config import ConfigError, load_config
from broker.connect import connect
from broker.logs import setup_logging
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
    try:
        config = load_config(ControllerConfig)
    except ConfigError as exc:
        print(f"vidfleet controller: {exc}", file=sys.stderr)
        return 2
    setup_logging("controller", level=config.log_level, json_lines=config.log_json)
    try:
        asyncio.run(_main(config))
    except (OSError, nats.errors.Error) as exc:
        logger.error("controller cannot run: {error}", error=str(exc) or type(exc).__name__)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
