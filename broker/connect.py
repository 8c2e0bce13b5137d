"""One way to open a NATS connection, with the settings long-running processes need.

nats-py's defaults give up for good after about two minutes of outage and log tracebacks on
server errors; an agent that quietly stops reconnecting strands its machine while it bills.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

import nats
from loguru import logger
from nats.aio.client import Client

from broker.creds import LiveCredentials

__all__ = ["connect"]


async def connect(
    url: str,
    *,
    name: str,
    inbox_prefix: str | None = None,
    credentials: LiveCredentials | None = None,
    tls_ca_file: str = "",
    max_reconnect_attempts: int = -1,
    **options: Any,
) -> Client:
    """Connect to ``url`` (comma-separated for a cluster), reconnecting forever by default;
    with ``credentials`` on an operator-mode server. ``tls://`` URLs always verify the
    server's certificate and host name (against ``tls_ca_file`` when given)."""

    last: dict[str, float] = {}

    async def on_error(exc: Exception) -> None:
        # While a server is down this fires on every reconnect attempt; say it once a minute.
        text, now = str(exc) or type(exc).__name__, time.monotonic()
        if now - last.get(text, float("-inf")) >= 60.0:
            last[text] = now
            logger.warning("nats error: {error}", error=text)

    async def on_disconnect() -> None:
        logger.info("nats disconnected")

    async def on_reconnect() -> None:
        logger.info("nats reconnected")

    kwargs: dict[str, Any] = dict(
        servers=[u.strip() for u in url.split(",") if u.strip()],
        name=name,
        max_reconnect_attempts=max_reconnect_attempts,
        reconnect_time_wait=0.5,
        ping_interval=20,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )
    if inbox_prefix:
        kwargs["inbox_prefix"] = inbox_prefix
    if tls_ca_file:  # a private CA; without it, tls:// servers are checked against the system's
        kwargs["tls"] = ssl.create_default_context(cafile=tls_ca_file)
    if credentials is not None:  # re-read at every reconnect: a renewed JWT takes effect
        kwargs["user_jwt_cb"] = credentials.user_jwt
        kwargs["signature_cb"] = credentials.sign
    kwargs.update(options)
    return await nats.connect(**kwargs)
