"""``python -m gpu_agent``: run one agent until SIGTERM/SIGINT (a second signal forces)."""

from __future__ import annotations

import asyncio
import signal
import sys

import nats.errors
from loguru import logger

from broker.config import ConfigError, load_config
from broker.logs import setup_logging
from gpu_agent.agent import Agent
from gpu_agent.config import AgentConfig


async def _main(config: AgentConfig) -> None:
    stop, force = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        (force if stop.is_set() else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await Agent(config).run(stop, force)


def main() -> int:
    try:
        config = load_config(AgentConfig)
    except ConfigError as exc:
        print(f"vidfleet agent: {exc}", file=sys.stderr)
        return 2
    setup_logging("agent", level=config.log_level, json_lines=config.log_json)
    try:
        asyncio.run(_main(config))
    except (RuntimeError, OSError, nats.errors.Error) as exc:
        # No working encoder, no fonts, or no server: this agent cannot do the work.
        logger.error("agent stopped: {error}", error=str(exc) or type(exc).__name__)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
