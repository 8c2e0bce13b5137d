"""Logging setup, called once by each entry point (never at import).

loguru with bound context: ``logger.bind(job_id=...)``. Human-readable lines on a terminal,
one JSON object per line in deployment (``json_lines=True``). Messages are constant templates
with arguments separate; secrets are never passed to a log call.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

__all__ = ["setup_logging"]

# Bound context worth showing on a terminal; everything else is already in the message.
_CONTEXT_KEYS = ("job_id", "attempt", "agent_id", "instance_id")


def _text_format(record: Record) -> str:
    context = " ".join(f"{k}={record['extra'][k]}" for k in _CONTEXT_KEYS if k in record["extra"])
    tail = f" <dim>{context}</dim>" if context else ""
    return ("<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
            "<cyan>{extra[component]}</cyan> {message}" + tail.replace("{", "{{").replace("}", "}}")
            + "\n{exception}")


def setup_logging(
    component: str, *, level: str = "INFO", json_lines: bool = False, sink: TextIO | None = None
) -> None:
    logger.remove()
    logger.configure(extra={"component": component})
    logger.add(
        sink or sys.stderr,
        level=level.upper(),
        serialize=json_lines,
        format="{message}" if json_lines else _text_format,
        colorize=None if not json_lines else False,
        backtrace=False,
        diagnose=False,  # diagnose prints local variables, which can hold secrets
    )
