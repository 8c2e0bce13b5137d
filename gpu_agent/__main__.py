"""``python -m gpu_agent``: run one agent until SIGTERM/SIGINT (a second signal forces)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from broker.entrypoint import run_process, stop_signals
from gpu_agent.agent import Agent
from gpu_agent.config import AgentConfig


async def _main(config: AgentConfig) -> None:
    stop, force = stop_signals()
    await Agent(config).run(stop, force)


def joined_jwt(env: Mapping[str, str]) -> str | None:
    """VIDFLEET_NATS_JWT_0, _1, ... joined in order (None when absent)."""
    pieces: list[str] = []
    while (piece := env.get(f"VIDFLEET_NATS_JWT_{len(pieces)}")) is not None:
        pieces.append(piece)
    return "".join(pieces) or None


def main() -> int:
    # What Vast.ai sets inside each container; absent elsewhere (local agents).
    platform = {"container_id": os.environ.get("CONTAINER_ID"),
                "container_api_key": os.environ.get("CONTAINER_API_KEY"),
                "nats_jwt": joined_jwt(os.environ)}
    return run_process("agent", AgentConfig, _main, overrides=platform)


if __name__ == "__main__":
    sys.exit(main())
