"""How a vidfleet process starts and ends: config from the environment, logging, run, an exit
code (0 done, 1 could not do its work, 2 bad configuration)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

import nats.errors
from loguru import logger
from msgspec import Struct

from broker.config import ConfigError, load_config
from broker.logs import setup_logging

__all__ = ["FORCE_SIGNAL", "PARENT_DEATH_SIGNAL", "run_process", "stop_signals"]

C = TypeVar("C", bound=Struct)


FORCE_SIGNAL = signal.SIGUSR1
# What a parent asks the kernel to send its children when it dies (PR_SET_PDEATHSIG): it
# comes once per thread of the parent as they exit, so it only ever stops.
PARENT_DEATH_SIGNAL = signal.SIGHUP


def stop_signals() -> tuple[asyncio.Event, asyncio.Event]:
    """(stop, force): the first SIGTERM/SIGINT sets ``stop`` (finish what is in hand), the
    second ``force`` (hand it back now); ``FORCE_SIGNAL`` (SIGUSR1) sets both, and is what a
    parent process sends, since two signals sent back to back can arrive as one.
    ``PARENT_DEATH_SIGNAL`` (SIGHUP), and any signal once this process's parent has died,
    only ever stop, however often they come: agents whose controller was killed finish their
    jobs instead of handing them back. Call from inside the loop."""
    stop, force = asyncio.Event(), asyncio.Event()
    parent = os.getppid()

    def on_signal() -> None:
        if stop.is_set() and os.getppid() == parent:
            force.set()
        stop.set()

    def on_force() -> None:
        stop.set()
        force.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    loop.add_signal_handler(PARENT_DEATH_SIGNAL, stop.set)
    loop.add_signal_handler(FORCE_SIGNAL, on_force)
    return stop, force


def run_process(component: str, config_type: type[C],
                body: Callable[[C], Coroutine[Any, Any, None]],
                overrides: Mapping[str, Any] | None = None) -> int:
    """Load ``config_type`` (which must have ``log_level`` and ``log_json``), set up logging,
    run ``body(config)``. A bad setting names its variable on stderr; a missing server, binary
    or encoder (RuntimeError, OSError, NATS errors) is one log line, not a traceback."""
    try:
        config = load_config(config_type, overrides=overrides)
    except ConfigError as exc:
        print(f"vidfleet {component}: {exc}", file=sys.stderr)
        return 2
    setup_logging(component, level=config.log_level,  # type: ignore[attr-defined]
                  json_lines=config.log_json)  # type: ignore[attr-defined]
    try:
        asyncio.run(body(config))
    except ConfigError as exc:  # settings that only make sense together, checked at start
        logger.error("{component}: {error}", component=component, error=str(exc))
        return 2
    except (RuntimeError, OSError, nats.errors.Error) as exc:
        logger.error("{component} stopped: {error}", component=component,
                     error=str(exc) or type(exc).__name__)
        return 1
    return 0
